"""Run the command line as a user would: its own process (a fork of a process that has already imported what the
command needs, as a sweep's trials run, or a fresh interpreter), or ``main()`` in this process."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning_depth.ablation.forkserver import ForkServer

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "tests" / "configs"
ENV = {"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
_forks: list[ForkServer] = []  # one fork server for the whole test session, started on first use
_keys = itertools.count()


def fork_server() -> ForkServer:
    """The session's fork server: a fresh interpreter (this one may run threads or OpenMP) that imported the CLI."""
    if not _forks or not _forks[0].alive:
        _forks[:] = [ForkServer(fresh=True, env={**os.environ, **ENV})]
    return _forks[0]


def cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
        check: bool = True, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m lightning_depth ARGS`` in its own process: a fork of the session's fork server, which skips
    the seconds of imports a fresh interpreter pays (``fresh=True``: a fresh interpreter)."""
    full_env = {**os.environ, **ENV, **(env or {})}
    if fresh:
        proc = subprocess.run([sys.executable, "-m", "lightning_depth", *args], cwd=cwd or ROOT, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    else:
        proc = _forked(list(args), cwd or ROOT, full_env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def cli_in_process(capfd, *args: str) -> subprocess.CompletedProcess:
    """The CLI's main() in this process: the exit code and output the command would give."""
    from lightning_depth.__main__ import main

    code = main(list(args))
    out = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def _forked(args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    server, key = fork_server(), next(_keys)
    with tempfile.TemporaryDirectory(prefix="lightning_depth_cli_") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        server.start(key, "lightning_depth", args, env, out, err, cwd=cwd)
        deadline = time.monotonic() + timeout
        while (code := server.poll(key)) is None:
            if time.monotonic() > deadline:
                server.kill(key, signal.SIGKILL)
                while server.poll(key) is None:
                    server.wait(0.1)
                raise subprocess.TimeoutExpired(["python", "-m", "lightning_depth", *args], timeout,
                                                out.read_text(), err.read_text())
            server.wait(0.2)
        return subprocess.CompletedProcess(["python", "-m", "lightning_depth", *args], code,
                                           out.read_text(errors="replace") if out.exists() else "",
                                           err.read_text(errors="replace") if err.exists() else "")
