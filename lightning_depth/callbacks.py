"""Callbacks the pipeline always installs: per-epoch reseeding, the run's result file, plain progress lines, and
the predictions file."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only

from lightning_depth.atomic import write_atomic, write_json
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


class Diverged(Exception):  # noqa: N818 - a result of training, not an error in the program
    """Training produced a non-finite loss or metric; ``result.json`` records where, and the run stops."""


class RunResult(Callback):
    """Writes ``result.json`` (best and final metrics, size, wall time) into the run directory when fit ends, and
    stops a run whose loss or metrics stop being finite (``"status": "diverged"``, with the step and the value).

    The metrics travel in every checkpoint, so a finished run that is started again (its loop then has nothing left
    to train) writes the same result. The training loss is checked on the host every ``log_every_n_steps`` steps on
    an accelerator (each check waits for the device), every step on CPU; the first non-finite step is kept on the
    device meanwhile, so the step reported is exact either way.
    """

    def __init__(self, input_size: int | None = None) -> None:
        self.input_size = input_size
        self.best: dict[str, float] = {}
        self.final: dict[str, float] = {}
        self.diverged: dict[str, Any] | None = None
        self.started = 0.0
        self.resumed_wall = 0.0
        self._bad_step: torch.Tensor | None = None
        self._bad_value: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        # Stored in the checkpoint so a resumed run reports the best of all its epochs and its total wall time, and
        # a run started again after it finished reports its final metrics.
        return {"best": self.best, "final": self.final,
                "wall": self.resumed_wall + (time.time() - self.started if self.started else 0.0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))
        self.final = dict(state.get("final", {}))
        self.resumed_wall = float(state.get("wall", 0.0))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.time()
        self.diverged = None
        self._bad_step = self._bad_value = None

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float()
        if self._bad_step is None:
            self._bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self._bad_step < 0)
        self._bad_step = torch.where(first, torch.full_like(self._bad_step, trainer.global_step), self._bad_step)
        self._bad_value = torch.where(first, loss, self._bad_value)
        every = max(1, trainer.log_every_n_steps) if loss.device.type != "cpu" else 1
        if trainer.global_step % every and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        found = bool(self._bad_step >= 0)
        if trainer.world_size > 1:  # every process stops at the same step
            found = trainer.strategy.reduce_boolean_decision(found, all=False)
        if found:
            step = int(self._bad_step)
            self._diverge(trainer, pl_module, "train/loss", float(self._bad_value) if step >= 0 else math.nan,
                          step if step >= 0 else trainer.global_step)

    def _diverge(self, trainer: Trainer, pl_module: LightningModule, key: str, value: float, step: int) -> None:
        self.diverged = {"metric": key, "value": str(value), "step": step}
        self.write(trainer, pl_module)
        raise Diverged(f"training diverged: {key} is {value} at step {step}")

    def _record(self, metrics: dict[str, Any], prefixes: tuple[str, ...], trainer: Trainer | None = None,
                pl_module: LightningModule | None = None) -> None:
        for key, raw in metrics.items():
            if not key.startswith(prefixes) or key.endswith("_best"):
                continue
            value = _value(raw)
            if value is None:
                if trainer is not None and _non_finite(raw):
                    self._diverge(trainer, pl_module, key, float(raw), trainer.global_step)
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
            self._record(trainer.callback_metrics, ("val/",), trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer.callback_metrics, ("train/",), trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._record(trainer.callback_metrics, ("test/",))
        self.write(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module)

    @rank_zero_only
    def write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        root = Path(trainer.default_root_dir)
        path = root / RESULT_FILE
        previous = _read_result(path)
        metrics = previous.get("metrics", {})
        for key, value in self.final.items():
            # A diverged run has no final value: its last finite one would read as where training ended.
            entry = {"final": value} if self.diverged is None else {}
            if not key.startswith("test/"):
                entry["best"] = self.best.get(key, value)
            metrics[key] = entry
        if trainer.state.fn != TrainerFn.FITTING and previous:
            # A test adds its metrics to the training run's record and leaves the rest (epochs, wall time) as fit
            # wrote it; it names the checkpoint it tested.
            write_json(path, {**previous, "metrics": metrics, "test_checkpoint": _ckpt_name(trainer)})
            return
        net = getattr(pl_module, "net", pl_module)
        result = {
            "status": "diverged" if self.diverged is not None else "done",
            **({"diverged": self.diverged} if self.diverged is not None else {}),
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


def _non_finite(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.numel() == 1 and not bool(torch.isfinite(x))
    return isinstance(x, float) and not math.isfinite(x)


def _read_result(path: Path) -> dict[str, Any]:
    """The previous ``result.json``; a damaged one is replaced (everything in it is recomputed or in the checkpoint)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _ckpt_name(trainer: Trainer) -> str | None:
    return str(trainer.ckpt_path) if trainer.ckpt_path else None


def describe_result(result: dict[str, Any]) -> str:
    """One line from ``result.json``: how long it trained and every validation and test metric (final, best)."""
    shown = []
    for key, entry in sorted(result.get("metrics", {}).items()):
        if key.startswith(("val/", "test/")) and entry.get("final") is not None:
            best = entry.get("best")
            shown.append(f"{key} {entry['final']:.4f}" + (f" (best {best:.4f})" if best is not None else ""))
    epochs = result.get("epochs")
    span = f" after {epochs} epoch{'s' if epochs != 1 else ''}" if epochs is not None else ""
    return f"result{span}: " + (", ".join(shown) or "no validation metrics")


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


PREDICTIONS_FILE = "predictions.csv"


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` into the run directory when ``predict`` ends: one row per input in the data's
    order (its index, or its file path), its label where the data has one, and the ``top_k`` classes with their names
    where the data names them, and probabilities. Under DDP every rank's rows are gathered to rank 0, which writes
    the file atomically.

    Args:
        top_k: classes per row (at most the number of classes).
    """

    def __init__(self, top_k: int = 5) -> None:
        super().__init__(write_interval="batch_and_epoch")
        if top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1")
        self.top_k = top_k
        self.rows: list[tuple[int, list[int], list[float]]] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        # Only the top classes are kept, so memory grows with the number of inputs, not with the number of classes.
        probs, classes = prediction.detach().float().topk(min(self.top_k, prediction.shape[-1]), dim=-1)
        if not batch_indices:  # a loader Lightning cannot track; one process reads it in order
            batch_indices = range(len(self.rows), len(self.rows) + len(probs))
        self.rows += zip(map(int, batch_indices), classes.tolist(), probs.tolist())

    def write_on_epoch_end(self, trainer: Trainer, pl_module: LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        rows = self.rows
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
            torch.distributed.gather_object(rows, parts, dst=0)
            rows = [row for part in parts or [] for row in part]
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / PREDICTIONS_FILE
            n = write_predictions(path, rows, trainer.predict_dataloaders, getattr(trainer.datamodule, "class_names",
                                                                                   None))
            print(f"predictions: {path} ({n:,} rows)", file=sys.stderr)


def write_predictions(path: Path, rows: list[tuple[int, list[int], list[float]]], loader: Any,
                      class_names: Sequence[str] | None) -> int:
    """The CSV of ``PredictionWriter``: rows by input index, each input once (a distributed sampler may repeat a few
    to give every rank the same number). Returns the number of rows."""
    dataset = getattr(loader[0] if isinstance(loader, (list, tuple)) else loader, "dataset", None)
    samples = getattr(dataset, "samples", None)  # ImageFolder, ImageFiles: (path, label or None)
    labels = getattr(dataset, "labels", None)  # TensorImages
    unique = dict(sorted({index: (classes, probs) for index, classes, probs in reversed(rows)}.items()))
    k = max((len(c) for c, _ in unique.values()), default=0)

    def label(index: int) -> int | None:
        if samples is not None:
            return samples[index][1]
        return int(labels[index]) if labels is not None else None

    has_labels = labels is not None or (samples is not None and any(y is not None for _, y in samples))
    header = ["path" if samples is not None else "index"]
    header += (["label"] + (["label_name"] if class_names else [])) if has_labels else []
    for rank in range(1, k + 1):
        header += [f"top{rank}"] + ([f"top{rank}_name"] if class_names else []) + [f"top{rank}_prob"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for index, (classes, probs) in unique.items():
        row: list[Any] = [samples[index][0] if samples is not None else index]
        if has_labels:
            y = label(index)
            row += [y if y is not None else ""]
            row += [class_names[y] if y is not None else ""] if class_names else []
        for c, p in zip(classes, probs):
            row += [c] + ([class_names[c]] if class_names else []) + [f"{p:.6g}"]
        writer.writerow(row)
    write_atomic(path, out.getvalue())
    return len(unique)
