"""pipeline: ``ImageClassifier`` fitted by the Trainer ``lightning_depth fit`` builds, against a plain loop on a copy
of the same network, timed in alternating windows inside one fit (docs/performance.md, Method)."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

from lightning_depth.bench.timing import Config, Row, paired
from lightning_depth.cli import DepthCLI

GOAL = 1.02


class InMemoryImages(LightningDataModule):
    """Random normalised images and labels held as tensors: the data of the pipeline comparison.

    Args:
        num_classes: number of classes.
        image_size: side of the square images.
        batch_size: images per batch.
        batches: training batches per epoch.
    """

    in_channels = 3

    def __init__(self, num_classes: int = 10, image_size: int = 32, batch_size: int = 128, batches: int = 16) -> None:
        super().__init__()
        self.num_classes, self.batch_size = num_classes, batch_size
        generator = torch.Generator().manual_seed(0)
        n = batch_size * batches
        self.train = TensorDataset(torch.randn(n, 3, image_size, image_size, generator=generator),
                                   torch.randint(0, num_classes, (n,), generator=generator))
        self.val = TensorDataset(*(t[:batch_size] for t in self.train.tensors))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)


class Interleave(Callback):
    """Inside a fit: times windows of ``steps`` Lightning steps and, after each, ``steps`` plain-loop steps.

    Args:
        steps: steps per window.
        warmup: untimed Lightning steps first (the plain loop warms up as many).
        rounds: most windows of each kind.
        deadline: no new round starts when it would end after this ``time.monotonic()`` value.
    """

    def __init__(self, steps: int = 3, warmup: int = 2, rounds: int = 3, deadline: float = math.inf) -> None:
        self.steps, self.warmup, self.rounds, self.deadline = steps, warmup, rounds, deadline
        self.lightning: list[float] = []
        self.plain: list[float] = []
        self.next_step = warmup
        self.started = 0.0

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.net = copy.deepcopy(pl_module.net)
        self.optimizer = pl_module.optimizer_factory(self.net.parameters())
        self.batches = self._forever(trainer.datamodule.train_dataloader())

    @staticmethod
    def _forever(loader: DataLoader) -> Iterator[Any]:
        while True:
            yield from loader

    def _plain(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(self.batches)
            self.optimizer.zero_grad()
            F.cross_entropy(self.net(x), y).backward()
            self.optimizer.step()
        return time.perf_counter() - start

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx != self.next_step or trainer.should_stop:
            return
        now = time.perf_counter()
        if batch_idx == self.warmup:
            self._plain(self.warmup)
        else:
            self.lightning.append(now - self.started)
            self.plain.append(self._plain(self.steps))
            if len(self.plain) >= self.rounds or time.monotonic() + 2 * self.plain[-1] > self.deadline:
                trainer.should_stop = True
                return
        self.next_step = batch_idx + self.steps
        self.started = time.perf_counter()


@contextlib.contextmanager
def quiet_fit(root: Path) -> Iterator[None]:
    """W&B offline into ``root``, Lightning's info lines and loader-worker hints silenced, environment restored."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(root), WANDB_SILENT="true")
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        # The fit's epoch line and W&B sync hint would point at a directory that is gone when the bench ends.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def fit_interleaved(depth: int, batch: int, size: int, window: int, warmup: int, rounds: int, deadline: float,
                    root: Path) -> tuple[list[float], list[float], str]:
    """Seconds per step of the CLI's fit and of the plain loop, paired by round, and what the fit ran with."""
    steps_needed = warmup + window * rounds + 2
    args = [
        "fit", "--seed_everything", "0",
        "--model.net", "lightning_depth.models.ResNet", "--model.net.depth", str(depth), "--model.net.stem", "cifar",
        "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.1", "--model.optimizer.momentum", "0.9",
        "--data", _class_path(InMemoryImages), "--data.batch_size", str(batch),
        "--data.image_size", str(size), "--data.batches", str(steps_needed + 2),
        "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps_needed),
        "--trainer.default_root_dir", str(root),
        f"--trainer.callbacks+={_class_path(Interleave)}",
        "--trainer.callbacks.steps", str(window), "--trainer.callbacks.warmup", str(warmup),
        "--trainer.callbacks.rounds", str(rounds), "--trainer.callbacks.deadline", repr(deadline),
    ]
    with quiet_fit(root):
        cli = DepthCLI(args=args)
    clock = next(c for c in cli.trainer.callbacks if isinstance(c, Interleave))
    names = sorted(type(c).__name__ for c in cli.trainer.callbacks if c is not clock)
    loggers = sorted(type(lg).__name__ for lg in cli.trainer.loggers)
    what = f"callbacks {', '.join(names)}; loggers {', '.join(loggers)}"
    return [t / window for t in clock.lightning], [t / window for t in clock.plain], what


def measure(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    # The overhead is per step and the same for any network, but a ResNet-20 b128 step's noise on a busy CPU is
    # larger than it; so it is also measured where it dominates (ResNet-8, batch 2, 8×8) and related to the step.
    start = time.monotonic()
    tiny_l, tiny_p, _ = fit_interleaved(8, 2, 8, window=5, warmup=5, rounds=10 * cfg.rounds,
                                        deadline=start + (deadline - start) * 0.35, root=tmp / "pipeline-tiny")
    # A pipeline round is one short window of each kind, so it pairs three times as many rounds as the others.
    big_l, big_p, what = fit_interleaved(20, cfg.batch, 32, cfg.window, cfg.warmup, 3 * cfg.rounds, deadline,
                                         tmp / "pipeline")
    step = f"ResNet-20 b{cfg.batch} step"
    direct = paired("pipeline", f"ImageClassifier+Trainer / plain loop, {step}", big_l, big_p, goal=GOAL, note=what)
    tiny = paired("pipeline", "ImageClassifier+Trainer / plain loop, ResNet-8 b2 8px step", tiny_l, tiny_p)
    overhead = [a - b for a, b in zip(tiny_l, tiny_p)]
    plain = statistics.median(big_p)
    projected = Row("pipeline", f"(plain step + per-step overhead) / plain step, {step}",
                    plain + statistics.median(overhead), plain, "s", 1 + statistics.median(overhead) / plain,
                    1 + min(overhead) / plain, 1 + max(overhead) / plain, len(overhead), GOAL,
                    note=f"overhead {statistics.median(overhead) * 1000:.1f} ms/step: median of the paired "
                         "differences on ResNet-8 (row above), over the plain ResNet-20 step")
    return [direct, tiny, projected]
