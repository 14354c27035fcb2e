"""Callbacks the pipeline always installs: per-epoch reseeding, the run's result file, plain progress lines."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from lightning_depth.atomic import write_json
from lightning_depth.metrics import RESULT_FILE, metric_mode
from lightning_depth.models.complexity import profile_model


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed that depends only on the run's seed, the epoch and the process rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class EpochReseed(Callback):
    """Reseed Python, NumPy and torch once per training epoch from (seed, epoch, rank), just before its data flows.

    Lightning checkpoints do not carry RNG state, so a run resumed at an epoch boundary would otherwise see
    another shuffle order, other augmentations and other dropout masks than the uninterrupted run. With the
    generators a pure function of the epoch, a resumed run trains bit for bit like an uninterrupted one.

    Timing matters: Lightning creates (and prefetches from) the first training iterator of a process before
    ``on_train_epoch_start``, right after it asks the datamodule for ``train_dataloader()``. So the first epoch of
    a process is reseeded in that request, later epochs in ``on_train_epoch_start``; either way the reseed comes
    just before the iterator is created, and only once per epoch.
    """

    def __init__(self) -> None:
        self._seeded_epoch: int | None = None

    def _reseed(self, trainer: Trainer, epoch: int) -> None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        s = epoch_seed(seed, epoch, trainer.global_rank)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # also seeds every CUDA device
        self._seeded_epoch = epoch

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._seeded_epoch = None
        datamodule = trainer.datamodule
        if datamodule is None or getattr(datamodule.train_dataloader, "reseeds", False):
            return
        original = datamodule.train_dataloader

        def train_dataloader() -> Any:
            # The epoch about to train: after a resume from an epoch-end checkpoint, current_epoch still names
            # the finished epoch until the loop moves on, while the progress tracker already counts it processed
            # (the same number Lightning gives samplers' set_epoch).
            self._reseed(trainer, trainer.fit_loop.epoch_progress.current.processed)
            return original()

        train_dataloader.reseeds = True  # type: ignore[attr-defined]
        datamodule.train_dataloader = train_dataloader

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._seeded_epoch != trainer.current_epoch:
            self._reseed(trainer, trainer.current_epoch)


def _value(x: Any) -> float | None:
    if isinstance(x, torch.Tensor):
        x = x.item()
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class RunResult(Callback):
    """Writes ``result.json`` (best and final metrics, size, wall time) into the run directory when fit ends."""

    def __init__(self, input_size: int | None = None) -> None:
        self.input_size = input_size
        self.best: dict[str, float] = {}
        self.final: dict[str, float] = {}
        self.started = 0.0
        self.resumed_wall = 0.0

    def state_dict(self) -> dict[str, Any]:
        # Stored in the checkpoint so a resumed run reports the best of all its epochs and its total wall time.
        return {"best": self.best, "wall": self.resumed_wall + (time.time() - self.started if self.started else 0.0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))
        self.resumed_wall = float(state.get("wall", 0.0))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.time()

    def _record(self, metrics: dict[str, Any], prefixes: tuple[str, ...]) -> None:
        for key, raw in metrics.items():
            if not key.startswith(prefixes) or key.endswith("_best"):
                continue
            value = _value(raw)
            if value is None:
                continue
            self.final[key] = value
            lower = metric_mode(key) == "min"
            old = self.best.get(key)
            if old is None or (value < old if lower else value > old):
                self.best[key] = value

    # The *_end hooks, not *_epoch_end: Lightning folds the epoch's logged values into callback_metrics
    # between the two.
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer.callback_metrics, ("val/",))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer.callback_metrics, ("train/",))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer.callback_metrics, ("test/",))
        self.write(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module)

    @rank_zero_only
    def write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        root = Path(trainer.default_root_dir)
        path = root / RESULT_FILE
        previous = json.loads(path.read_text()) if path.exists() else {}
        metrics = previous.get("metrics", {})
        for key, value in self.final.items():
            entry = {"final": value}
            if not key.startswith("test/"):
                entry["best"] = self.best.get(key, value)
            metrics[key] = entry
        net = getattr(pl_module, "net", pl_module)
        result = {
            "metrics": metrics,
            "params": sum(p.numel() for p in net.parameters()),
            "macs": previous.get("macs") or self._macs(trainer, net),
            "wall_time_s": self.resumed_wall + (time.time() - self.started if self.started else 0.0),
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "wandb_run_id": _wandb_run_id(trainer),
        }
        write_json(path, result)

    def _macs(self, trainer: Trainer, net: torch.nn.Module) -> int | None:
        size = self.input_size or getattr(trainer.datamodule, "image_size", None)
        if size is None:
            return None
        try:
            in_channels = getattr(trainer.datamodule, "in_channels", 3)
            was_training = net.training
            macs = profile_model(net, size, in_channels=in_channels).macs
            net.train(was_training)
            return int(macs)
        except Exception:  # noqa: BLE001 - a size probe must never fail a finished run
            return None


def _wandb_run_id(trainer: Trainer) -> str | None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.version
    return None


class EpochLines(Callback):
    """One plain line per epoch (for log files and SLURM output, where a progress bar is noise)."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        shown = []
        for key in ("train/loss", "val/loss", "val/acc1", "val/acc1_best"):
            value = _value(trainer.callback_metrics.get(key))
            if value is not None:
                shown.append(f"{key} {value:.4f}")
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"epoch {trainer.current_epoch + 1}{epochs} step {trainer.global_step}: " + ", ".join(shown),
              file=sys.stderr, flush=True)
