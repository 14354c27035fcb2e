"""The fork server: a fork runs ``python -m MODULE ARGS`` as a fresh interpreter would, starts with the preloaded
modules and without a CUDA context, has its own pid and exit code (a crash takes no other fork down), and dies with
the launcher. Real forks of a real server; the probe module (tests/helpers/fork_probe.py) reports what it found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_depth.ablation.forkserver import PRELOAD, ForkServer
from tests.helpers.cli import CONFIGS, ROOT

PROBE = "tests.helpers.fork_probe"
# What a trial needs and a fresh interpreter would spend seconds importing.
HEAVY = ("torch", "lightning", "torchmetrics", "wandb", "jsonargparse", "sklearn", "lightning_depth.commands.trial")


@pytest.fixture(scope="module")
def server():
    """One server for the module, started fresh: this test process may already run threads or OpenMP."""
    forks = ForkServer(fresh=True, env={**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)})
    yield forks
    forks.close()


def finish(server: ForkServer, key: object, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while (code := server.poll(key)) is None:
        assert time.monotonic() < deadline, f"fork {key} still runs after {timeout} s"
        server.wait(0.1)
    return code


def start(server: ForkServer, key: str, tmp_path: Path, *args: str, env: dict | None = None) -> Path:
    out = tmp_path / f"{key}.json"
    server.start(key, PROBE, [str(out), *args], {**os.environ, **(env or {})}, tmp_path / f"{key}.out",
                 tmp_path / f"{key}.err", cwd=tmp_path)
    return out


def test_a_fork_starts_as_python_m_would_with_the_preloaded_modules_and_no_cuda_context(server, tmp_path):
    out = start(server, "plain", tmp_path, "ok", "--flag", env={"FORK_PROBE": "yes", "OMP_NUM_THREADS": "1"})
    assert finish(server, "plain") == 0
    found = json.loads(out.read_text())
    assert found["name"] == "__main__" and found["argv"] == [str(out), "ok", "--flag"] and found["cwd"] == str(tmp_path)
    assert found["pid"] != server.pid and found["ppid"] == server.pid and server.pids["plain"] == found["pid"]
    assert found["env"]["FORK_PROBE"] == "yes" and found["threads"] == 1
    modules = set(found["modules"])
    assert all(name in modules for name in HEAVY), sorted(set(HEAVY) - modules)
    # The server's state when it forked: no CUDA context to inherit, not even the driver (on a machine with a GPU).
    assert found["cuda_initialized"] is False and found["cuda_driver_loaded"] is False
    assert (tmp_path / "plain.out").read_text() == "to stdout\n"
    assert (tmp_path / "plain.err").read_text() == "to stderr\n"


def test_an_environment_is_the_forks_own(server, tmp_path):
    out = start(server, "env", tmp_path, "ok")
    assert finish(server, "env") == 0
    assert "FORK_PROBE" not in json.loads(out.read_text())["env"]  # nothing left over from another fork's request


def test_each_fork_has_its_own_exit_code_and_a_crash_takes_no_other_fork_down(server, tmp_path):
    start(server, "sleeper", tmp_path, "sleep")
    start(server, "crash", tmp_path, "crash")
    start(server, "segfault", tmp_path, "segfault")
    start(server, "exit", tmp_path, "exit", "3")
    assert finish(server, "crash") == 1
    assert "RuntimeError: this fork crashed on purpose" in (tmp_path / "crash.err").read_text()
    assert finish(server, "segfault") == -signal.SIGSEGV
    assert finish(server, "exit") == 3
    assert server.poll("sleeper") is None and server.alive  # still running, and so is the server
    out = start(server, "after", tmp_path, "ok")
    assert finish(server, "after") == 0 and out.is_file()
    server.kill("sleeper")
    assert finish(server, "sleeper") == -signal.SIGKILL


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"  # a zombie has ended
    except (FileNotFoundError, IndexError):
        return True


LAUNCHER = """
import json, os, sys, time
from lightning_depth.ablation.forkserver import ForkServer
{before}
server = ForkServer(preload=[])
server.start(1, "tests.helpers.fork_probe", [sys.argv[1], sys.argv[2]], dict(os.environ), sys.argv[1] + ".log")
while 1 not in server.pids and server.poll(1) is None:
    server.wait(0.1)
if sys.argv[2] == "sleep":
    print(json.dumps({{"how": server.how, "server": server.pid, "fork": server.pids[1]}}), flush=True)
    time.sleep(600)
while server.poll(1) is None:
    server.wait(0.1)
print(json.dumps({{"how": server.how, "code": server.poll(1)}}), flush=True)
"""


def _launcher(tmp_path: Path, mode: str, before: str = "") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCHER.format(before=before), str(tmp_path / "probe.json"), mode],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_killing_the_launcher_kills_the_server_and_its_forks(tmp_path):
    launcher = _launcher(tmp_path, "sleep")
    try:
        started = json.loads(launcher.stdout.readline())
        assert started["how"] == "forked from the launcher"
        assert not _gone(started["server"]) and not _gone(started["fork"])
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 30
    while not (_gone(started["server"]) and _gone(started["fork"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(started["server"]) and _gone(started["fork"])


@pytest.mark.slow  # waits for the canary, then for a fresh interpreter's imports
def test_a_launcher_whose_openmp_threads_run_gets_a_fresh_server_whose_forks_can_use_openmp(tmp_path):
    # GNU OpenMP hangs a parallel region in a fork of a process whose thread team exists.
    launcher = _launcher(tmp_path, "omp", before="import torch; torch.set_num_threads(2); torch.ones(1 << 18).add_(1)")
    out, _ = launcher.communicate(timeout=300)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["how"].startswith("a fresh interpreter") and "OpenMP" in found["how"]
    assert found["code"] == 0


@pytest.mark.slow  # trains a (tiny) trial
def test_a_forked_trial_imports_nothing_the_server_did_not_hold(server, tmp_path):
    config = yaml.safe_load((CONFIGS / "tiny_resnet.yaml").read_text())
    config["trainer"].update(max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                             default_root_dir=str(tmp_path / "trial"))
    (tmp_path / "trial").mkdir()
    (tmp_path / "trial" / "config.yaml").write_text(yaml.safe_dump(config))
    out = start(server, "trial", tmp_path, "trial", str(tmp_path / "trial"))
    assert finish(server, "trial") == 0, (tmp_path / "trial.err").read_text()[-3000:]
    found = json.loads(out.read_text())
    assert (tmp_path / "trial" / "result.json").is_file()
    tops = {name.split(".")[0] for name in found["modules"]}
    new_packages = {name.split(".")[0] for name in found["imported"]} - tops
    assert not new_packages, f"a trial imported packages the server had not: {sorted(new_packages)}"
    # Only stray submodules are left to import (a data file's reader, a serialisation config), not W&B's start.
    assert len(found["imported"]) < 40, found["imported"]
    assert set(PRELOAD) <= set(found["modules"]) | {"attrs"}
