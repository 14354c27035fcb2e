"""How the bench measures: sizes (Config), paired rounds that alternate their order (interleave), the median of
per-round ratios with its range (paired, Row), and the training step every section times. Torch only."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_depth.models import ResNet


@dataclass(frozen=True)
class Config:
    """Sizes of every measurement; ``quick`` shrinks them so the whole bench runs in seconds (for tests)."""

    quick: bool = False
    rounds: int = 5
    budget_s: float = 400.0
    threads: int = 1
    compile: bool = True
    batch: int = 128  # ResNet-20 CIFAR batch of the pipeline and fast-path sections (He et al. 2015 §4.2)
    window: int = 1  # Lightning steps per timed window, and plain steps after it: short windows pair better
    warmup: int = 2
    zoo_batch: dict[str, int] = field(default_factory=lambda: {"resnet50": 4, "vgg16": 2, "densenet121": 4})
    zoo_size: int = 64
    folder_size: int = 224
    folder_model_batch: int = 4
    memory_batch: int = 8
    memory_rounds: int = 2  # each round starts two Python processes
    memory_size: int = 112

    @classmethod
    def make(cls, quick: bool, **overrides: Any) -> Config:
        if not quick:
            return cls(**overrides)
        small = dict(quick=True, rounds=2, budget_s=40.0, batch=16, window=2, warmup=1,
                     zoo_batch={"resnet50": 2, "vgg16": 2, "densenet121": 2}, zoo_size=32, folder_size=64,
                     folder_model_batch=2, memory_batch=2, memory_size=32, memory_rounds=1, compile=False)
        return cls(**{**small, **overrides})


@dataclass
class Row:
    """One comparison: arm A against reference B, the median paired ratio A/B with its range over n rounds."""

    section: str
    name: str
    a: float | None
    b: float | None
    unit: str
    ratio: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    goal: float | None = None
    note: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.goal is None or self.ratio is None else self.ratio <= self.goal

    @property
    def settled(self) -> bool | None:
        """Whether every round falls on the same side of the goal as the median (else the noise decides)."""
        if self.met is None:
            return None
        return self.high <= self.goal if self.met else self.low > self.goal


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(arms: dict[str, Callable[[], float]], deadline: float, most: int) -> dict[str, list[float]]:
    """Call every arm once per round (each returns its seconds), alternating the order, for at least one round and
    at most ``most``, stopping when the next round would pass ``deadline`` (a ``time.monotonic`` value)."""
    names = list(arms)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(most):
        start = time.monotonic()
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(arms[name]())
        if time.monotonic() + (time.monotonic() - start) > deadline:
            break
    return times


def paired(section: str, name: str, a: list[float], b: list[float], unit: str = "s",
           goal: float | None = None, invert: bool = False, note: str = "") -> Row:
    """The row of two equally long series measured in rounds; ``invert`` reports b/a (a speed-up) instead."""
    ratios = [(y / x if invert else x / y) for x, y in zip(a, b) if (x if invert else y) > 0]
    if not ratios:
        return Row(section, name, statistics.median(a), statistics.median(b), unit, None, n=0, goal=goal,
                   note=note or "too small to measure")
    return Row(section, name, statistics.median(a), statistics.median(b), unit, statistics.median(ratios),
               min(ratios), max(ratios), len(ratios), goal, note)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast: bool = False) -> None:
    """One SGD step on cross-entropy; ``autocast``: bf16 autocast on the device ``x`` lives on."""
    optimizer.zero_grad()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


def resnet20(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return ResNet(depth=20, stem="cifar", num_classes=num_classes)
