"""data: each data module's training loader with its default worker count, against a training step of the network
it feeds; the share is t_load / (t_load + t_step) per image, since on a CPU the workers compete with the model."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_depth.bench.timing import Config, Row, interleave, resnet20, timed, train_step
from lightning_depth.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule
from lightning_depth.data.synthetic import write_image_folder, write_synthetic_cifar
from lightning_depth.models import build_model

GOAL = 0.10
FOLDER_BATCH = 8  # of the default 256, so that the 8 default workers all get batches of the small folder


def _epoch_seconds_per_image(loader: DataLoader) -> float:
    count = 0
    start = time.perf_counter()
    for x, _ in loader:
        count += len(x)
    return (time.perf_counter() - start) / count


def _modules(cfg: Config, tmp: Path) -> dict[str, tuple[Any, str]]:
    """title -> (data module over files written under ``tmp``, the network it feeds)."""
    write_synthetic_cifar(tmp / "cifar", per_file=128 if cfg.quick else 512, test=128)
    write_image_folder(tmp / "folder", per_class=16 if cfg.quick else 48, val_per_class=2,
                       size=(160, 120) if cfg.quick else (500, 375))
    return {
        "Digits": (DigitsDataModule(), "cifar"),
        "CIFAR-10": (CIFAR10DataModule(root=str(tmp / "cifar"), val_split=256), "cifar"),
        "ImageFolder": (ImageFolderDataModule(root=str(tmp / "folder"), image_size=cfg.folder_size,
                                              batch_size=FOLDER_BATCH), "folder"),
    }


def _steps(cfg: Config) -> dict[str, Callable[[], float]]:
    """Seconds per image of a training step: ResNet-20 on 32×32 batches of 128; ResNet-18 (the cheapest residual
    ImageNet network) on image_size crops, at a small batch because a CPU step at 224 takes seconds."""
    nets = {"cifar": (resnet20(), cfg.batch, 32),
            "folder": (build_model("resnet18", num_classes=2), cfg.folder_model_batch, cfg.folder_size)}
    steps = {}
    for key, (net, batch, size) in nets.items():
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
        steps[key] = (lambda n=net, o=optimizer, x=x, y=y, b=batch: timed(lambda: train_step(n, o, x, y)) / b)
        steps[key]()  # warm-up
    return steps


def measure(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    modules = _modules(cfg, tmp)
    loaders = {}
    with warnings.catch_warnings():
        # torch warns that 8 workers exceed this machine's cores; 8 is the module's default, which is measured here.
        warnings.simplefilter("ignore", UserWarning)
        for title, (dm, _) in modules.items():
            dm.setup("fit")
            loaders[title] = dm.train_dataloader()
            _epoch_seconds_per_image(loaders[title])  # starts (persistent) workers; not timed
    arms = {**{f"load {t}": (lambda ld=ld: _epoch_seconds_per_image(ld)) for t, ld in loaders.items()},
            **{f"step {k}": fn for k, fn in _steps(cfg).items()}}
    t = interleave(arms, deadline, cfg.rounds)
    rows = []
    for title, (dm, key) in modules.items():
        load, step = t[f"load {title}"], t[f"step {key}"]
        shares = [lo / (lo + st) for lo, st in zip(load, step)]
        net = "ResNet-20" if key == "cifar" else "ResNet-18"
        rows.append(Row("data", f"{title} loader share of a {net} step ({dm.num_workers} workers)",
                        1 / statistics.median(load), 1 / statistics.median(step), "img/s",
                        statistics.median(shares), min(shares), max(shares), len(shares), GOAL,
                        note="a: loader images/s, b: training images/s"))
    return rows
