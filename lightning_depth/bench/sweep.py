"""sweep: what a sweep costs beyond its training, with trials forked from a fork server against a fresh Python per
trial (each with its own W&B service, as before the fork server and as on SLURM), in alternating rounds.

Each round runs the same small ablation once each way, as a user does: ``python -m lightning_depth fit --config
FILE`` in a fresh process, with ``--fork-server true`` or ``false``. The launcher's summary line gives the sweep's
wall time (its launch to the last trial's end) and the median start-up per trial; ``result.json`` gives each trial's
training time (its fit, the ``time`` column of the report). The quickstart's design and recipe (post- against
pre-activation ResNet-20 on the 16×16 digits, three seeds) at fewer epochs; ``--quick``: ResNet-8 on 8×8 digits, two
trials of a few steps.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lightning_depth.ablation.launch_local import parse_summary
from lightning_depth.bench.timing import Config, Row, interleave, paired

GOAL = 1.2
EPOCHS = 3
ARMS = {"fork server": True, "fresh process": False}


def experiment(quick: bool) -> dict[str, Any]:
    """The quickstart (experiments/preact_ablation.yaml) at EPOCHS epochs, or a tiny version of it."""
    epochs = 1 if quick else EPOCHS
    trainer: dict[str, Any] = {"max_epochs": epochs, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 5}
    if quick:
        trainer.update(limit_train_batches=3, limit_val_batches=1, enable_model_summary=False)
    return {
        "seed_everything": 0,
        "trainer": trainer,
        "model": {
            "net": {"class_path": "lightning_depth.models.ResNet",
                    "init_args": {"depth": 8 if quick else 20, "stem": "cifar"}},
            "optimizer": {"class_path": "torch.optim.SGD",
                          "init_args": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4}},
            "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                             "init_args": {"T_max": epochs}},
        },
        "data": {"class_path": "lightning_depth.data.DigitsDataModule",
                 "init_args": {"image_size": 8 if quick else 16, "batch_size": 32 if quick else 64}},
        "ablation": {"name": "preact", "design": "factorial",
                     "factors": {"model.net.init_args.preact": [False, True]},
                     "baseline": {"model.net.init_args.preact": False}, "seeds": [0] if quick else [0, 1, 2]},
    }


def run_sweep(config: Path, root: Path, fork_server: bool, threads: int, timeout: float) -> dict[str, float]:
    """One sweep as a command: its wall time whole and from launch to the last trial, training, start-up."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore"}
    env.pop("WANDB_SERVICE", None)
    if threads > 0:  # both ways train with the bench's threads
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "lightning_depth", "fit", "--config", str(config),
               "--trainer.default_root_dir", str(root), "--fork_server", str(fork_server).lower()]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root.parent, env=env, capture_output=True, text=True, timeout=timeout)
    command_s = time.perf_counter() - start
    found = parse_summary(done.stderr)
    if done.returncode != 0 or found is None or "training_s" not in found:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the sweep failed (exit {done.returncode}): {tail[:200]}")
    shutil.rmtree(root, ignore_errors=True)
    return {**found, "command_s": command_s}


def measure(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    work = tmp / "sweep"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "preact.yaml"
    config.write_text(yaml.safe_dump(experiment(cfg.quick), sort_keys=False))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}

    def arm(name: str) -> float:
        left = max(deadline - time.monotonic(), 0.0)
        found = run_sweep(config, work / f"{len(runs[name])}-{name.replace(' ', '-')}", ARMS[name], cfg.threads,
                          timeout=max(left, 600.0))
        runs[name].append(found)
        return found["wall_s"]

    interleave({name: (lambda name=name: arm(name)) for name in ARMS}, deadline, cfg.rounds)
    fork, fresh = runs["fork server"], runs["fresh process"]
    trials, epochs = int(fork[0]["trials"]), experiment(cfg.quick)["trainer"]["max_epochs"]
    what = f"{trials} trials of {epochs} epoch{'s' if epochs != 1 else ''}"
    rows = []
    for name, found in runs.items():
        rows.append(paired("sweep", f"sweep wall / training, {name}, {what}", [f["wall_s"] for f in found],
                           [f["training_s"] for f in found], goal=GOAL if name == "fork server" else None,
                           note=_whole_command(found)))
    rows.append(paired("sweep", "start-up per trial, fork server / fresh process", [f["startup_s"] for f in fork],
                       [f["startup_s"] for f in fresh],
                       note=f"median start-up per trial; fresh: {statistics.median(f['startup_s'] for f in fresh):.2f}"
                            f" s is what each SLURM array task pays"))
    return rows


def _whole_command(found: list[dict[str, float]]) -> str:
    ratios = [f["command_s"] / f["training_s"] for f in found if f["training_s"] > 0]
    median = statistics.median(f["command_s"] for f in found)
    return (f"the whole command (the launcher's own start-up, planning and report too): {median:.1f} s, "
            f"{statistics.median(ratios):.2f}x the training" if ratios else "")
