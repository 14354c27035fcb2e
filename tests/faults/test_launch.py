"""Launching fails closed: a queue that cannot answer stops a submission before it writes anything, each SLURM job
keeps its own trial list, a local launch leaves what a SLURM job holds alone, the GPUs a user gave are the only ones
used, trial configurations work from any directory, and every file follows the umask.

The SLURM tests submit to the real single-node cluster of tests/helpers/slurm_cluster.py; the array tasks run a
stand-in interpreter that records which trial it was given, so the submissions are tested without training.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from lightning_depth.ablation import slurm_queue
from lightning_depth.ablation.launch_local import slot_env
from lightning_depth.commands import status
from lightning_depth.data.synthetic import write_image_folder
from tests.faults.sweeps import experiment, program, queue_that, snapshot, stand_in_python
from tests.helpers.cli import cli, cli_in_process


def job_of(proc) -> str:
    found = re.search(r"submitted array job (\d+)", proc.stdout)
    assert found, f"no job id in:\n{proc.stdout}\n{proc.stderr}"
    return found[1]


def the_error(proc) -> str:
    """The one line a refused command printed; no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return line


# ----------------------------------------------------------------------------------------------------- GPUs


@pytest.mark.parametrize("visible, expected", [
    ("2,3", ["2", "3", "2"]),
    ("GPU-5e1a, GPU-77b0", ["GPU-5e1a", "GPU-77b0", "GPU-5e1a"]),
    (None, ["0", "1", "0"]),
])
def test_slots_take_turns_over_the_gpus_the_user_gave(monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert [slot_env(slot, parallel=3, gpus=2)["CUDA_VISIBLE_DEVICES"] for slot in range(3)] == expected


# ---------------------------------------------------------------------------------------- files and directories


def sbatch_that_accepts(bin_dir: Path) -> str:
    """A PATH whose sbatch takes every script (job 4242) and whose squeue cannot answer: a submission that writes
    every file of a real one, with no cluster."""
    program(bin_dir, "sbatch", "echo 4242\n")
    program(bin_dir, "squeue", "exit 1\n")
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("umask", [0o002, 0o022], ids=["umask-002", "umask-022"])
def test_every_file_an_ablation_writes_follows_the_umask(umask, tmp_path, monkeypatch, capfd):
    home = tmp_path / "home"
    exp = experiment(home / "exp.yaml", preact=(False,))
    monkeypatch.chdir(home)
    monkeypatch.setenv("PATH", sbatch_that_accepts(tmp_path / "bin"))
    previous = os.umask(umask)
    try:
        submitted = cli_in_process(capfd, "fit", "--config", str(exp), "--launcher", "slurm")
        assert submitted.returncode == 0, submitted.stderr
        # The same trial then runs locally (the stand-in job never ran): log.txt, checkpoints, results, plots.
        local = cli_in_process(capfd, "fit", "--config", str(exp), "--ignore-queue", "--fork_server", "false")
        assert local.returncode == 0, local.stderr
    finally:
        os.umask(previous)
    ablation = home / "runs" / "abl"
    written = {p.relative_to(ablation).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in ablation.rglob("*")}
    names = set(written)
    for expected in ("ablation.json", "slurm/jobs.txt", "slurm/trials-1.txt", "slurm/ablation-1.sbatch"):
        assert expected in names
    for suffix in ("/log.txt", "/state.json", "/config.yaml", "/result.json", "/checkpoints/last.ckpt", ".png"):
        assert any(name.endswith(suffix) for name in names), f"no {suffix} among {sorted(names)}"
    wrong = {name: oct(mode) for name, mode in written.items()
             if mode != (0o777 if (ablation / name).is_dir() else 0o666) & ~umask}
    assert not wrong, f"umask {umask:03o}: {wrong}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_runs_the_same_from_any_directory(tmp_path, monkeypatch, capfd):
    """Planned from home with relative paths (output root, ImageFolder root), run from another directory."""
    home = tmp_path / "home"
    write_image_folder(home / "data", classes=2, per_class=8, val_per_class=4, size=(12, 12))
    experiment(home / "exp.yaml", preact=(False,), data={
        "class_path": "lightning_depth.data.ImageFolderDataModule",
        "init_args": {"root": "data", "image_size": 8, "batch_size": 8, "num_workers": 0}})
    monkeypatch.chdir(home)
    monkeypatch.setenv("PATH", sbatch_that_accepts(tmp_path / "bin"))
    assert cli_in_process(capfd, "fit", "--config", "exp.yaml", "--launcher", "slurm").returncode == 0
    (trial_dir,) = [p.parent for p in (home / "runs" / "abl").glob("*/config.yaml")]
    config = yaml.safe_load((trial_dir / "config.yaml").read_text())
    assert config["trainer"]["default_root_dir"] == str(trial_dir)
    assert config["data"]["init_args"]["root"] == str(home / "data")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cli("trial", os.path.relpath(trial_dir, elsewhere), cwd=elsewhere)
    assert json.loads((trial_dir / "state.json").read_text())["state"] == "done"
    assert json.loads((trial_dir / "result.json").read_text())["metrics"]["val/acc1"]["final"] >= 0
    assert not list(elsewhere.iterdir()), "the trial wrote into the directory it was started from"


# ------------------------------------------------------------------------------------------------------ SLURM


def wait_for(cluster, job: str, wanted: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (states := cluster.job_states(job)) != wanted:
        assert time.monotonic() < deadline, f"job {job} is {states}, not {wanted}\n{cluster.logs()}"
        time.sleep(0.3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_submission_fails_closed_and_every_job_keeps_its_own_trials(cluster, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    hold = tmp_path / "hold"
    hold.touch()
    options = {"python": stand_in_python(tmp_path / "bin", hold), "array_throttle": 1}
    first = experiment(tmp_path / "first.yaml", slurm=options)
    job_a = job_of(cli_in_process(capfd, "fit", "--config", str(first), "--launcher", "slurm"))
    ablation = tmp_path / "runs" / "abl"
    listed = (ablation / "slurm" / "trials-1.txt").read_text().splitlines()
    wait_for(cluster, job_a, {f"{job_a}_0": "RUNNING", f"{job_a}_1": "PENDING"})
    before = snapshot(ablation)

    # The design changes (arms in the other order, a second seed), and the queue cannot answer: nothing moves.
    second = experiment(tmp_path / "second.yaml", preact=(True, False), seeds=(0, 1), slurm=options)
    monkeypatch.setattr(slurm_queue, "SQUEUE_TIMEOUT_S", 1.0)
    real_path = os.environ["PATH"]
    for behaviour, why in (("fails", "squeue failed: squeue: error: Unable to contact slurm controller"),
                           ("hangs", "squeue did not answer within 1 s"), (None, "squeue not found")):
        path = queue_that(tmp_path / f"bin-{behaviour}", behaviour)
        monkeypatch.setenv("PATH", path if behaviour is None else f"{path}{os.pathsep}{real_path}")
        refused = cli_in_process(capfd, "fit", "--config", str(second), "--launcher", "slurm")
        assert refused.returncode == 2
        line = the_error(refused)
        assert why in line and f"job {job_a}" in line and "--ignore-queue" in line, line
        assert snapshot(ablation) == before, f"a refused submission ({behaviour}) changed the ablation's files"
    monkeypatch.setenv("PATH", real_path)

    # The queue answers: job A still holds its trials.
    refused = cli_in_process(capfd, "fit", "--config", str(second), "--launcher", "slurm")
    assert refused.returncode == 2 and f"job {job_a} of this ablation is still queued" in the_error(refused)
    assert snapshot(ablation) == before

    # A local launch of the same design starts nothing job A holds, and says which task holds each trial.
    local = cli_in_process(capfd, "fit", "--config", str(first))
    assert local.returncode == 1 and "FAILED" not in local.stderr and "exit code 3" not in local.stderr
    for index, trial in enumerate(listed):
        assert f"not started: {Path(trial).name} (job {job_a}_{index} is" in local.stderr, local.stderr
    assert "2 running elsewhere" in local.stderr

    # Going ahead without the queue, on request: job B has its own list, and A's waiting task still runs its trial.
    monkeypatch.setenv("PATH", f"{queue_that(tmp_path / 'bin-fails', 'fails')}{os.pathsep}{real_path}")
    ahead = cli_in_process(capfd, "fit", "--config", str(second), "--launcher", "slurm", "--ignore-queue")
    monkeypatch.setenv("PATH", real_path)
    assert ahead.returncode == 0 and "--ignore-queue: going ahead" in ahead.stderr, ahead.stderr
    job_b = job_of(ahead)
    second_list = (ablation / "slurm" / "trials-2.txt").read_text().splitlines()
    assert (ablation / "slurm" / "trials-1.txt").read_text().splitlines() == listed
    assert second_list[1] != listed[1], "the second list must put another trial where job A's waiting task looks"
    assert "trials-1.txt" in (ablation / "slurm" / "ablation-1.sbatch").read_text()
    hold.unlink()
    for job in (job_a, job_b):
        assert set(cluster.wait_job(job, timeout=120).values()) == {"COMPLETED"}
    for job, trials in ((job_a, listed), (job_b, second_list)):
        for index, trial in enumerate(trials):
            assert (Path(trial) / f"ran-{job}_{index}").read_text() == trial
    assert slurm_queue.submitted_jobs(ablation) == [job_a, job_b]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_trial_whose_job_died_is_interrupted_and_says_which_job(cluster, tmp_path, monkeypatch, capfd):
    """The task marks its trial running, as a trial does, then is killed: the ledger still says running."""
    monkeypatch.chdir(tmp_path)
    python = program(tmp_path / "bin", "python", f"""\
        import os, signal, sys
        from lightning_depth.ablation import ledger
        ledger.mark_running(sys.argv[-1])
        os.kill(os.getpid(), signal.{signal.SIGKILL.name})
        """, interpreter=sys.executable)
    exp = experiment(tmp_path / "exp.yaml", preact=(False,), slurm={"python": str(python)})
    job = job_of(cli_in_process(capfd, "fit", "--config", str(exp), "--launcher", "slurm"))
    assert set(cluster.wait_job(job, timeout=120).values()) == {"FAILED"}
    assert status.main([str(tmp_path / "runs" / "abl"), "--format", "json"]) == 0
    (row,) = json.loads(capfd.readouterr().out)["trials"]
    assert (row["state"], row["reason"], row["slurm_job"]) == ("interrupted", f"job {job}_0 ended FAILED", f"{job}_0")
