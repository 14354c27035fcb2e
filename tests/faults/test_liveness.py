"""A trial whose process is gone is not running: its heartbeat stops, ``status`` and ``compare`` say it is
interrupted and why, and a relaunch resumes it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lightning_depth.ablation import ledger
from lightning_depth.ablation.ledger import TrialState
from lightning_depth.ablation.liveness import LAUNCHER_ENV, STALE_S, Heartbeat, Owner, owner
from lightning_depth.ablation.render import render
from lightning_depth.ablation.report import build_report
from lightning_depth.commands import status
from tests.faults.sweeps import experiment, program
from tests.faults.trials import make_trial
from tests.faults.trials import state as trial_state
from tests.helpers.cli import ROOT, cli, cli_in_process


def test_the_heartbeat_beats_while_the_trial_trains_and_never_after(tmp_path):
    ledger.mark_running(tmp_path)
    first = ledger.read_state(tmp_path)
    with Heartbeat(tmp_path, interval=0.05):
        time.sleep(1.2)  # heartbeats carry whole seconds: at least one later second is written
        beating = ledger.read_state(tmp_path)
    assert (beating.state, beating.pid, beating.host) == ("running", os.getpid(), socket.gethostname())
    assert beating.heartbeat > first.heartbeat and beating.updated == first.updated
    ledger.mark_done(tmp_path)
    time.sleep(0.2)
    assert ledger.read_state(tmp_path).state == "done", "a heartbeat overwrote the outcome"


def test_who_holds_a_running_trial(tmp_path):
    """Each witness in turn: this host's process table (a recycled pid is someone else), then the heartbeat."""
    now = datetime.now(timezone.utc)
    here, elsewhere = socket.gethostname(), "node-elsewhere"
    assert owner(TrialState("running", host=here, pid=os.getpid(), updated=now.isoformat()), None).alive
    written = (now - timedelta(seconds=30)).isoformat(timespec="seconds")
    later = subprocess.Popen(["sleep", "30"])  # a live process whose pid the state names, started after it
    try:
        found = owner(TrialState("running", host=here, pid=later.pid, updated=written), None)
        assert found == Owner(False, f"pid {later.pid} on {here} is gone")
    finally:
        later.kill()
        later.wait()
    fresh = (now - timedelta(seconds=STALE_S / 2)).isoformat(timespec="seconds")
    assert owner(TrialState("running", host=elsewhere, pid=7, heartbeat=fresh), None) == Owner(
        True, f"pid 7 on {elsewhere}")
    stale = now - timedelta(seconds=2 * STALE_S)
    assert owner(TrialState("running", host=elsewhere, pid=7, heartbeat=stale.isoformat()), None) == Owner(
        False, f"no heartbeat from pid 7 on {elsewhere} since {stale.strftime('%Y-%m-%d %H:%M')} UTC")
    # The queue outranks the heartbeat: a requeued job still owns its trial, a finished one does not.
    queued = TrialState("running", host=elsewhere, pid=7, slurm_job="42_3", heartbeat=stale.isoformat())
    assert owner(queued, {"42_3": "PENDING"}) == Owner(True, "job 42_3 is pending")
    assert owner(queued, {}) == Owner(False, "job 42_3 left the queue")


def test_a_trial_that_another_live_process_runs_is_not_started_twice(capfd, tmp_path):
    exp, root = experiment(tmp_path / "exp.yaml", preact=(False,)), tmp_path / "runs"
    bin_dir = tmp_path / "bin"
    program(bin_dir, "sbatch", "echo 4242\n")
    with pytest.MonkeyPatch.context() as patch:  # a submission that only writes the trial, to find its directory
        patch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        assert cli_in_process(capfd, "fit", "--config", str(exp), "--trainer.default_root_dir", str(root),
                              "--launcher", "slurm").returncode == 0
    (root / "abl" / "slurm" / "jobs.txt").unlink()
    (trial,) = [p.parent for p in (root / "abl").glob("*/config.yaml")]
    ledger.mark_running(trial)  # this test's own process: alive, and older than the state it wrote
    second = cli_in_process(capfd, "fit", "--config", str(exp), "--trainer.default_root_dir", str(root))
    assert second.returncode == 1 and "FAILED" not in second.stderr
    assert f"not started: {trial.name} (pid {os.getpid()} on {socket.gethostname()})" in second.stderr
    assert ledger.read_state(trial).state == "running" and not (trial / "checkpoints").exists()


def wait_until_dead(pid: int, timeout: float = 30) -> None:
    """SIGKILL is delivered at once, but a process with many threads takes a moment to stop being one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} outlived SIGKILL by {timeout} s")


def states(ablation) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in ablation.glob("*/state.json")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sweep_killed_mid_trial_is_interrupted_and_a_relaunch_finishes_it(tmp_path, capsys):
    exp = experiment(tmp_path / "exp.yaml", trainer={"max_epochs": 3})
    root, ablation = tmp_path / "runs", tmp_path / "runs" / "abl"
    command = [sys.executable, "-m", "lightning_depth", "fit", "--config", str(exp), "--trainer.default_root_dir",
               str(root)]
    sweep = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "WANDB_MODE": "offline"}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 600, None
    while killed is None and sweep.poll() is None and time.monotonic() < deadline:
        found = states(ablation) if ablation.exists() else {}
        running = [t for t, s in found.items() if s["state"] == "running"]
        if running and (ablation / running[0] / "checkpoints" / "last.ckpt").exists():
            killed = running[0]
        time.sleep(0.05)
    assert killed, "the sweep ended before a trial was halfway"
    os.killpg(sweep.pid, signal.SIGKILL)  # the driver and every trial it started, at once
    sweep.wait()
    pid = states(ablation)[killed]["pid"]
    wait_until_dead(pid)

    assert status.main([str(ablation), "--format", "json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["trials"]}
    assert (rows[killed]["state"], rows[killed]["reason"]) == ("interrupted", f"pid {pid} on {socket.gethostname()} "
                                                                              "is gone")
    report = build_report(ablation)
    assert report.totals["interrupted"] == 1 and report.totals["running"] == 0
    assert "1 (1 interrupted)" in render(report, "markdown")

    relaunch = cli("fit", "--config", str(exp), "--trainer.default_root_dir", str(root))
    assert "0 done, 2 to run" in relaunch.stderr
    after = states(ablation)
    assert {s["state"] for s in after.values()} == {"done"} and after[killed]["attempts"] == 2
    for trial in after:
        result = json.loads((ablation / trial / "result.json").read_text())
        # Resumed where it stopped: every epoch trained once, none skipped.
        assert (result["epochs"], result["global_step"]) == (3, 6), (trial, result)


def _ended_pid() -> int:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("launcher", ["ended", "none"])
def test_a_trial_that_loses_its_wandb_service_once_its_launcher_ended_is_interrupted_not_failed(tmp_path, launcher):
    """A killed launch takes its W&B service with it, and its trials a moment later (PR_SET_PDEATHSIG). A trial that
    meets the lost service in that moment resumes when the launch runs again; without an ended launcher, the same
    error is the trial's own failure."""
    trial_dir = make_trial(tmp_path / "abl", trainer={"max_epochs": 1})
    # W&B's service token (WANDB_SERVICE: version 3, the parent's pid, a Unix socket) for a socket nobody serves.
    env = {"WANDB_SERVICE": f"3-{os.getpid()}-unix-{tmp_path / 'gone.sock'}"}
    if launcher == "ended":
        env[LAUNCHER_ENV] = str(_ended_pid())
    proc = cli("trial", str(trial_dir), env=env, check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    found = trial_state(trial_dir)
    if launcher == "ended":
        assert (found["state"], found["reason"]) == ("pending", "its launcher ended; resumes when run again")
    else:
        assert found["state"] == "failed" and "launcher" not in found["reason"], found
