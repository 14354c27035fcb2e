"""A run stopped by SIGTERM in the middle of an epoch continues that epoch where it stopped, and ends exactly like a
run that was never stopped; W&B and the CSV log hold every step once. (SLURM's USR1, with the requeue, is specified
on the real cluster in tests/ablation/test_slurm.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers.cli import CONFIGS, ROOT, cli
from tests.helpers.wandb_records import offline_runs, read_run

STEPS_PER_EPOCH = 12
ENV = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def preemptible_config(tmp_path: Path) -> Path:
    """The tiny ResNet with augmentation and mixup (random numbers in the data and in the step), epochs long enough
    to be interrupted in, and the CSV log written every step so that the test sees where training is."""
    config = yaml.safe_load((CONFIGS / "tiny_resnet.yaml").read_text())
    config["trainer"].update(max_epochs=2, limit_train_batches=STEPS_PER_EPOCH)
    config["trainer"]["logger"] = [
        {"class_path": "lightning_depth.loggers.WandbLogger"},
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": ".", "name": "csv", "flush_logs_every_n_steps": 1}},
    ]
    config["model"]["mixup_alpha"] = 0.4
    config["data"]["init_args"].update(image_size=32, augment=True)
    path = tmp_path / "preemptible.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit(config: Path, run: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightning_depth", "fit", "--config", str(config),
           "--trainer.default_root_dir", str(run)]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def trained_steps(run: Path) -> int:
    """The training steps the CSV log has seen so far."""
    log = run / "csv" / "version_0" / "metrics.csv"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines()[1:] if line.split(",")[0].strip())


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def logged_steps(run: Path) -> list[int]:
    return sorted(int(row["trainer/global_step"]) for path in offline_runs(run) for row in read_run(path).history
                  if "train/loss" in row)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_in_the_first_epoch_resumes_mid_epoch_and_ends_bit_identical(tmp_path):
    config = preemptible_config(tmp_path)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    reference = fit(config, straight)  # alongside: both are single-threaded
    proc = fit(config, stopped)
    deadline = time.monotonic() + 300
    while trained_steps(stopped) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]

    (preempted,) = (stopped / "checkpoints").glob("preempted-step*.ckpt")
    ckpt = torch.load(preempted, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and 3 <= ckpt["global_step"] < STEPS_PER_EPOCH, "not stopped inside the first epoch"
    assert not (stopped / "checkpoints" / "last.ckpt").exists()
    first_segment = logged_steps(stopped)
    assert first_segment == list(range(ckpt["global_step"])), "W&B lost steps logged before the signal"

    resumed = cli("fit", "--config", str(config), "--trainer.default_root_dir", str(stopped),
                  env={"OMP_NUM_THREADS": "1"})
    assert f"resuming from {preempted}" in resumed.stderr
    assert "not resumable" not in resumed.stderr
    assert reference.wait(timeout=300) == 0

    a, b = weights(straight), weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not bit-exact"
    # Every step trained and logged once: the interrupted epoch was continued, not started again.
    assert logged_steps(stopped) == list(range(2 * STEPS_PER_EPOCH)) == logged_steps(straight)
    assert len(offline_runs(stopped)) == 2 and len({read_run(p).run_id for p in offline_runs(stopped)}) == 1
    assert not list((stopped / "checkpoints").glob("preempted-step*.ckpt")), "a finished run keeps no preemption file"
