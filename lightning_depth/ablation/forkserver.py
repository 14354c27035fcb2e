"""A fork server: one process that has imported what a trial needs, and forks a process per trial.

``python -m lightning_depth trial DIR`` spends seconds before it trains: the interpreter starts and imports torch,
Lightning, torchmetrics and W&B. The server pays that once per sweep. Each request is ``python -m MODULE ARGV`` with
its own environment, working directory, output files and intra-op threads; the server forks, and the fork runs the
module as ``python -m`` does (``runpy``), so the trial's entry point is the command every launcher runs. A fork keeps
what isolates a trial: its own pid and exit code, its own CUDA context (nothing in the server touches CUDA) and DDP
group (Lightning starts the other ranks as fresh processes), and ``PR_SET_PDEATHSIG``: a fork dies with the server,
and the server with the launcher, so killing the launcher kills every trial.

The server is forked from the launcher when that is safe, which costs nothing, and otherwise starts as a fresh
interpreter that imports ``PRELOAD`` by name. Forking is safe when the launcher holds no other Python thread, has
not loaded the CUDA driver, and never started its OpenMP thread team: GNU OpenMP cannot run a parallel region in a
fork of a process whose team exists (it hangs), so a canary fork runs one parallel op before the server accepts work.

Requests and events are JSON lines on two pipes: ``{"key", "module", "argv", "env", "cwd", "stdout", "stderr",
"threads"}`` in; ``{"ready"}`` or ``{"unsafe": reason}`` once, then ``{"key", "pid"}`` when a fork starts and
``{"key", "code"}`` when it ends (a negative code is the signal that ended it, as ``subprocess`` reports it).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import importlib
import json
import logging
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# What a trial imports, by name: the trial command (torch, Lightning, torchmetrics, jsonargparse, the data modules),
# what W&B imports only when a run starts (seconds of it: its launch and public API modules), and attrs, which
# jsonargparse imports on its first parse.
PRELOAD = ("lightning_depth.commands.trial", "wandb", "wandb.sdk.wandb_init", "wandb.sdk.launch.inputs.internal",
           "wandb.sdk.lib.gitlib", "wandb.apis.public", "attrs")
PR_SET_PDEATHSIG = 1
CANARY_TIMEOUT_S = 5.0


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent ends (Linux; elsewhere the trial lock prevents two
    writers)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def fork_unsafe_reason() -> str | None:
    """Why this process cannot be forked into a server now, or None when only the canary is left to check."""
    if torch.cuda.is_initialized() or cuda_driver_loaded():
        return "CUDA is initialised in the launcher"
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"the launcher runs other threads ({', '.join(others[:3])})"
    return None


def cuda_driver_loaded() -> bool:
    """Whether this process has loaded the CUDA driver: ``torch.cuda.is_available()`` does that (``cuInit``) without
    creating a context, and a fork of such a process cannot use CUDA."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libcuda.so" in line for line in maps)
    except OSError:
        return False


class ForkServer:
    """The launcher's end: start forks of ``python -m MODULE ARGV`` and learn their pids and exit codes.

    Args:
        preload: modules the server imports before it forks anything (a server forked from the launcher also holds
            whatever the launcher had imported).
        fresh: start the server as a fresh interpreter even when forking the launcher would be safe.
        env: the environment of a server that starts as a fresh interpreter (default: this process's).
    """

    def __init__(self, preload: Sequence[str] = PRELOAD, fresh: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.preload, self.env = list(preload), env
        self.codes: dict[Any, int] = {}
        self.pids: dict[Any, int] = {}
        self.how = ""
        reason = "asked for one" if fresh else fork_unsafe_reason()
        if reason is None:
            self._fork()
        else:
            self._spawn(reason)

    def _fork(self) -> None:
        req_r, self._requests = os.pipe()
        self._events, evt_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # nothing buffered here may be written a second time by a fork
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self._requests)
                os.close(self._events)
                die_with_parent()
                atexit._clear()  # the launcher's exit handlers are not the server's
                serve(req_r, evt_w, self.preload, canary=True)
                atexit._run_exitfuncs()
                code = 0
            except BaseException:  # noqa: BLE001 - the fork must not return into the launcher
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(evt_w)
        self.pid, self._proc, self._buffer, self._ready = pid, None, b"", False
        self.how = "forked from the launcher"

    def _spawn(self, reason: str) -> None:
        req_r, self._requests = os.pipe()
        self._events, evt_w = os.pipe()
        code = f"from {__name__} import serve; serve({req_r}, {evt_w}, {json.dumps(self.preload)})"
        self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(req_r, evt_w), env=self.env,
                                      stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        os.close(req_r)
        os.close(evt_w)
        # Requests wait in the pipe while the server imports; its first fork starts when that is done.
        self.pid, self._buffer, self._ready = self._proc.pid, b"", True
        self.how = f"a fresh interpreter: {reason}"

    def start(self, key: Any, module: str, argv: Sequence[str], env: dict[str, str], stdout: Path,
              stderr: Path | None = None, cwd: Path | None = None, threads: int | None = None) -> None:
        """Fork ``python -m module argv``; its output goes to ``stdout`` (and ``stderr``, else the same file).
        ``threads``: intra-op threads when ``env`` sets no OMP_NUM_THREADS (default: the server's, which are those
        of a fresh interpreter, or of the launcher when the server was forked from it)."""
        while not self._ready:
            self._read(timeout=1.0)
            if not self._ready and not self._alive():
                raise RuntimeError(f"the fork server ({self.how}) ended before it was ready")
        request = {"key": key, "module": module, "argv": list(argv), "env": env, "cwd": str(cwd or os.getcwd()),
                   "stdout": str(stdout), "stderr": str(stderr or stdout),
                   "threads": threads}
        _send(self._requests, request)

    @property
    def alive(self) -> bool:
        """Whether the server still runs."""
        return self._alive()

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def _read(self, timeout: float) -> None:
        """Take in every event the server has sent, waiting up to ``timeout`` seconds for the first."""
        while select.select([self._events], [], [], timeout)[0]:
            chunk = os.read(self._events, 65536)
            if not chunk:
                return
            timeout = 0
            *lines, self._buffer = (self._buffer + chunk).split(b"\n")
            for event in (json.loads(line) for line in lines if line.strip()):
                if "unsafe" in event:  # the canary hung: start over as a fresh interpreter
                    self._stop()
                    self._spawn(event["unsafe"])
                    return
                if "ready" in event:
                    self._ready = True
                elif "pid" in event:
                    self.pids[event["key"]] = event["pid"]
                elif "code" in event:
                    self.codes[event["key"]] = event["code"]

    def poll(self, key: Any) -> int | None:
        """The exit code of the fork started under ``key``, or None while it runs."""
        if key not in self.codes:
            self._read(timeout=0)
        if key not in self.codes and not self._alive():
            self._read(timeout=0)
            self.codes.setdefault(key, -signal.SIGKILL)  # the server ended: its forks died with it
        return self.codes.get(key)

    def wait(self, timeout: float) -> None:
        """Return when the server reports something, or after ``timeout`` seconds."""
        self._read(timeout)

    def kill(self, key: Any, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the fork started under ``key`` if it still runs."""
        pid = self.pids.get(key)
        if pid is not None and key not in self.codes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def close(self) -> None:
        """Stop the server: it exits once its forks have (a fork still running when it must go dies with it)."""
        self._stop(grace_s=5.0)

    def _stop(self, grace_s: float = 0.0) -> None:
        with contextlib.suppress(OSError):
            os.close(self._requests)
        deadline = time.monotonic() + grace_s
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
        else:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        with contextlib.suppress(OSError):
            os.close(self._events)


# The server's end.

def serve(requests: int, events: int, preload: Sequence[str], canary: bool = False) -> None:
    """Import ``preload``, then fork one process per request until the launcher closes ``requests``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the trials directly; the launcher decides
    # Should an import ask whether CUDA is available, torch answers through NVML and leaves the driver alone.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    threads = torch.get_num_threads()
    if canary:
        reason = _canary()
        if reason:
            _send(events, {"unsafe": reason})
            return
    _send(events, {"ready": os.getpid()})
    for name in preload:
        with contextlib.suppress(ImportError):  # an optional package (W&B) may be missing
            importlib.import_module(name)
    # What the server holds is never garbage: out of the collector's sight, a fork's collections stay as short as a
    # fresh interpreter's instead of walking (and copying, page by page) the millions of objects of torch & co.
    gc.collect()
    gc.freeze()
    children: dict[int, Any] = {}
    buffer, listening = b"", True
    while listening or children:
        ready, _, _ = select.select([requests] if listening else [], [], [], 0.05)
        if ready:
            chunk = os.read(requests, 65536)
            listening = bool(chunk)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in filter(bytes.strip, lines):
                request = json.loads(line)
                pid = _fork_request({**request, "threads": request["threads"] or threads},
                                    requests, events)
                children[pid] = request["key"]
                _send(events, {"key": request["key"], "pid": pid})
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _send(events, {"key": children.pop(pid), "code": os.waitstatus_to_exitcode(status)})


def _send(fd: int, message: dict[str, Any]) -> None:
    """One JSON line, whole: a pipe takes a long line in parts."""
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _canary() -> str | None:
    """None when a fork of this process can run a parallel torch op, else why not."""
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(2)
        torch.ones(1 << 18).add_(1)  # above ATen's grain size: one OpenMP parallel region
        os._exit(0)
    deadline = time.monotonic() + CANARY_TIMEOUT_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return None if os.waitstatus_to_exitcode(status) == 0 else "a forked torch op failed"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "the launcher's OpenMP threads are running (a forked parallel op hangs)"


def _fork_request(request: dict[str, Any], requests: int, events: int) -> int:
    server = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.close(requests)
        os.close(events)
        die_with_parent()
        if os.getppid() != server:  # the server ended between the fork and the line above
            os._exit(1)
        code = _run(request)
    except BaseException:  # noqa: BLE001 - a fork must never return into the server's loop
        traceback.print_exc()
    finally:
        os._exit(code)


def _run(request: dict[str, Any]) -> int:
    """In the fork: become ``python -m MODULE ARGV`` as a fresh interpreter would be, run it, exit like one."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _redirect(request["stdout"], request["stderr"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # found again from this environment's TMPDIR
    os.chdir(request["cwd"])
    threads = int(os.environ.get("OMP_NUM_THREADS") or request["threads"])
    torch.set_num_threads(max(1, threads))
    # The server's exit handlers are not this process's (W&B's would delete directories other forks still use);
    # the ones the trial registers run when it ends, as at a fresh interpreter's exit.
    atexit._clear()
    module = request["module"]
    sys.modules.pop(f"{module}.__main__", None)  # runpy executes it afresh as __main__
    sys.argv = [sys.executable, *request["argv"]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as end:
        code = _exit_code(end.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - an uncaught error ends the process with code 1, as Python's does
        traceback.print_exc()
        code = 1
    _exit_like_python(code)
    return code


def _exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    print(value, file=sys.stderr)
    return 1


def _redirect(stdout: str, stderr: str) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")


def _exit_like_python(code: int) -> None:
    """What interpreter exit does that matters here: wait for the trial's own threads, finish its W&B run (exit
    handlers of W&B's shared service do not do that for a process that does not own it), run its exit handlers."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.finish(exit_code=code)
        except Exception:  # noqa: BLE001 - report it; the trial's exit code stands
            traceback.print_exc()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
