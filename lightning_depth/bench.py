"""bench: what the pipeline costs over a plain PyTorch loop, our models against torchvision's, the loaders' share of a
step, the fast paths, and DenseNet's memory-efficient mode, on this machine's CPU.

Method. On a shared machine the speed of a core drifts by tens of percent within a minute, so nothing is compared
with a number measured at another time. A comparison is a series of rounds; each round times every arm once, back
to back, in an order that alternates between rounds, and gives one ratio per pair of arms. The table reports the
median of those paired ratios, their range and their count n. Warm-up calls are never timed. Rounds continue until
``--rounds`` or until the section's share of ``--budget`` is spent, so a busier machine gives a smaller n.

* pipeline — ``ImageClassifier`` fitted by the very Trainer ``lightning_depth fit`` builds (``DepthCLI``: W&B in
  offline mode and CSV loggers, EpochReseed, RunResult, the progress callback, ModelCheckpoint; all writing into a
  temporary directory) against a plain loop (zero_grad, forward, cross-entropy, backward, step) on a copy of the
  same ResNet-20 with the same optimizer and a loader over the same in-memory tensors. The plain loop runs inside
  the fit: a callback takes the time at ``on_train_batch_start`` of step k and of step k+N (N Lightning steps, each
  with its batch fetch), then runs N plain steps, each with its fetch, and times them; the next Lightning window
  starts when they are done. Start-up (parsing, loggers, W&B, sanity validation) is outside every window. Metrics
  go to the loggers every 50 steps (Lightning's default), usually outside the short windows; that cost is a few
  milliseconds per 50 steps. The same comparison on ResNet-8 at batch 2 and 8×8, where the fixed per-step cost
  dominates, gives that cost as a median of paired differences; over the plain ResNet-20 step it estimates the
  ratio far more tightly than the direct one, whose noise on a busy CPU exceeds the 2% sought.
* models — forward and backward of our network and torchvision's where the configurations coincide (torchvision's
  state dict is loaded into ours, which also proves the architectures are the same).
* data — each data module's training loader with its default worker count, one epoch after a warm one (workers
  started), against a training step of the network it feeds. The share reported is t_load / (t_load + t_step) per
  image: on a CPU the workers compete with the model for the same cores, so their time adds to the step.
* fastpaths — channels_last, bf16 autocast (what ``--trainer.precision bf16-mixed`` does on a CPU) and
  ``torch.compile`` against fp32 on ResNet-20; compile runs in a fresh process, so its compile time is what a run
  pays (less when the inductor cache already holds the kernels), and is cut off at the section's time.
* memory — DenseNet with and without ``memory_efficient``, each in a fresh process: the rise of the peak resident
  set over one forward and backward (VmHWM after resetting it, else ru_maxrss), and the time of the next step.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import logging
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_depth.errors import UsageError

SECTIONS = ("pipeline", "models", "data", "fastpaths", "memory")
# Share of --budget (start-up, warm-up and rounds) each section may spend; what a section leaves, or overruns by,
# goes to or comes from the sections after it. A section always completes one round.
SHARES = {"pipeline": 0.22, "models": 0.15, "data": 0.10, "fastpaths": 0.33, "memory": 0.20}
GOALS = {"pipeline": 1.02, "models": 1.02, "data": 0.10}


@dataclass(frozen=True)
class Config:
    """Sizes of every measurement; ``quick`` shrinks them so the whole bench runs in seconds (for tests)."""

    quick: bool = False
    rounds: int = 5
    budget_s: float = 250.0
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


# -- timing ------------------------------------------------------------------------------------------------------


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
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


def resnet20(num_classes: int = 10) -> nn.Module:
    from lightning_depth.models import ResNet

    torch.manual_seed(0)
    return ResNet(depth=20, stem="cifar", num_classes=num_classes)


# -- data the bench writes (nothing is downloaded) ----------------------------------------------------------------


def write_synthetic_cifar(root: Path, module: type | None = None, per_file: int = 512, test: int = 512) -> Path:
    """Random images in the on-disk format of ``module`` (CIFAR10DataModule or CIFAR100DataModule): the pickled
    N×3072 uint8 batches the archives unpack to, with balanced labels. Returns ``root``."""
    from lightning_depth.data.cifar import CIFAR10DataModule

    module = module or CIFAR10DataModule
    folder = Path(root) / module.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*module.train_files, *module.test_files):
        n = test if name in module.test_files else per_file * (5 // len(module.train_files))
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 module.label_key.encode(): [i % module.num_classes for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return Path(root)


def write_image_folder(root: Path, classes: int = 2, per_class: int = 48, val_per_class: int = 4,
                       size: tuple[int, int] = (500, 375)) -> Path:
    """``root/{train,val}/<class>/*.jpg`` with smooth random content at about ImageNet's mean image size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = Path(root) / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                coarse = rng.integers(0, 256, (size[1] // 25 + 1, size[0] // 25 + 1, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize(size, Image.BILINEAR)
                noise = rng.integers(-12, 13, (size[1], size[0], 3))
                pixels = np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
    return Path(root)


# -- pipeline ----------------------------------------------------------------------------------------------------


@functools.cache
def _lightning_classes() -> dict[str, type]:
    """The Lightning pieces of the pipeline comparison, built on first use: importing Lightning takes seconds, and
    the compile and memory probes, which import this module in fresh processes, need only torch."""
    from lightning.pytorch import Callback, LightningDataModule

    class InMemoryImages(LightningDataModule):
        """Random normalised images and labels held as tensors: the data of the pipeline comparison.

        Args:
            num_classes: number of classes.
            image_size: side of the square images.
            batch_size: images per batch.
            batches: training batches per epoch.
        """

        in_channels = 3

        def __init__(self, num_classes: int = 10, image_size: int = 32, batch_size: int = 128,
                     batches: int = 16) -> None:
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

    classes = {"InMemoryImages": InMemoryImages, "Interleave": Interleave}
    for name, cls in classes.items():
        cls.__qualname__ = name  # so that the CLI writes the class path it was given
    return classes


def __getattr__(name: str) -> type:
    # Makes `lightning_depth.bench.InMemoryImages` and `.Interleave` class paths the CLI can import.
    classes = _lightning_classes()
    if name in classes:
        return classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _fit_interleaved(depth: int, batch: int, size: int, window: int, warmup: int, rounds: int, deadline: float,
                     root: Path) -> tuple[list[float], list[float], str]:
    """Seconds per step of the CLI's fit and of the plain loop, paired by round, and what the fit ran with."""
    from lightning_depth.cli import DepthCLI

    steps_needed = warmup + window * rounds + 2
    args = [
        "fit", "--seed_everything", "0",
        "--model.net", "lightning_depth.models.ResNet", "--model.net.depth", str(depth), "--model.net.stem", "cifar",
        "--model.optimizer", "torch.optim.SGD", "--model.optimizer.lr", "0.1", "--model.optimizer.momentum", "0.9",
        "--data", "lightning_depth.bench.InMemoryImages", "--data.batch_size", str(batch),
        "--data.image_size", str(size), "--data.batches", str(steps_needed + 2),
        "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps_needed),
        "--trainer.default_root_dir", str(root),
        "--trainer.callbacks+=lightning_depth.bench.Interleave",
        "--trainer.callbacks.steps", str(window), "--trainer.callbacks.warmup", str(warmup),
        "--trainer.callbacks.rounds", str(rounds), "--trainer.callbacks.deadline", repr(deadline),
    ]
    with quiet_fit(root):
        cli = DepthCLI(args)
    clock = next(c for c in cli.trainer.callbacks if isinstance(c, _lightning_classes()["Interleave"]))
    names = sorted(type(c).__name__ for c in cli.trainer.callbacks if c is not clock)
    loggers = sorted(type(lg).__name__ for lg in cli.trainer.loggers)
    what = f"callbacks {', '.join(names)}; loggers {', '.join(loggers)}"
    return [t / window for t in clock.lightning], [t / window for t in clock.plain], what


def bench_pipeline(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    # The overhead is per step and the same for any network, but a ResNet-20 b128 step's noise on a busy CPU is
    # larger than it; so it is also measured where it dominates (ResNet-8, batch 2, 8×8) and related to the step.
    start = time.monotonic()
    tiny_l, tiny_p, _ = _fit_interleaved(8, 2, 8, window=5, warmup=5, rounds=10 * cfg.rounds,
                                         deadline=start + (deadline - start) * 0.35, root=tmp / "pipeline-tiny")
    # A pipeline round is one short window of each kind, so it pairs three times as many rounds as the others.
    big_l, big_p, what = _fit_interleaved(20, cfg.batch, 32, cfg.window, cfg.warmup, 3 * cfg.rounds, deadline,
                                          tmp / "pipeline")
    step = f"ResNet-20 b{cfg.batch} step"
    direct = paired("pipeline", f"ImageClassifier+Trainer / plain loop, {step}", big_l, big_p,
                    goal=GOALS["pipeline"], note=what)
    tiny = paired("pipeline", "ImageClassifier+Trainer / plain loop, ResNet-8 b2 8px step", tiny_l, tiny_p)
    overhead = [a - b for a, b in zip(tiny_l, tiny_p)]
    plain = statistics.median(big_p)
    projected = Row("pipeline", f"(plain step + per-step overhead) / plain step, {step}",
                    plain + statistics.median(overhead), plain, "s", 1 + statistics.median(overhead) / plain,
                    1 + min(overhead) / plain, 1 + max(overhead) / plain, len(overhead), GOALS["pipeline"],
                    note=f"overhead {statistics.median(overhead) * 1000:.1f} ms/step: median of the paired "
                         "differences on ResNet-8 (row above), over the plain ResNet-20 step")
    return [direct, tiny, projected]


# -- models ------------------------------------------------------------------------------------------------------

# name in our registry -> (toggles that make it torchvision's configuration, torchvision builder, display name)
ZOO = {
    "resnet50": ({"stride_in_3x3": True, "shortcut": "B"}, "resnet50", "ResNet-50"),
    "vgg16": ({}, "vgg16", "VGG-16"),
    "densenet121": ({}, "densenet121", "DenseNet-121"),
}


def bench_models(cfg: Config, deadline: float) -> list[Row]:
    import torchvision

    from lightning_depth.models import build_model

    arms, shapes = {}, {}
    for name, (toggles, tv_name, _) in ZOO.items():
        ours, theirs = build_model(name, **toggles), getattr(torchvision.models, tv_name)()
        ours.load_state_dict(theirs.state_dict())  # strict: the same architecture, and the same weights
        batch = cfg.zoo_batch[name]
        x, y = torch.randn(batch, 3, cfg.zoo_size, cfg.zoo_size), torch.randint(0, 1000, (batch,))
        shapes[name] = batch
        for side, model in (("ours", ours), ("torchvision", theirs)):
            def run(model: nn.Module = model, x: torch.Tensor = x, y: torch.Tensor = y) -> float:
                model.zero_grad(set_to_none=True)
                return timed(lambda: F.cross_entropy(model(x), y).backward())
            run()  # warm-up
            arms[f"{side} {name}"] = run
    # One round runs every network, so each gets the same number of pairs.
    t = interleave(arms, deadline, cfg.rounds)
    return [paired("models", f"{title} ours / torchvision, fwd+bwd b{shapes[name]} {cfg.zoo_size}px",
                   t[f"ours {name}"], t[f"torchvision {name}"], goal=GOALS["models"])
            for name, (_, _, title) in ZOO.items()]


# -- data --------------------------------------------------------------------------------------------------------


def _epoch_seconds_per_image(loader: DataLoader) -> float:
    count = 0
    start = time.perf_counter()
    for x, _ in loader:
        count += len(x)
    return (time.perf_counter() - start) / count


def bench_data(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    from lightning_depth.data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule
    from lightning_depth.models import build_model

    write_synthetic_cifar(tmp / "cifar", per_file=128 if cfg.quick else 512, test=128)
    write_image_folder(tmp / "folder", per_class=16 if cfg.quick else 48, val_per_class=2,
                       size=(160, 120) if cfg.quick else (500, 375))
    folder_batch = 8  # of the default 256, so that the 8 default workers all get batches of the small folder
    modules = {
        "Digits": (DigitsDataModule(), "cifar"),
        "CIFAR-10": (CIFAR10DataModule(root=str(tmp / "cifar"), val_split=256), "cifar"),
        "ImageFolder": (ImageFolderDataModule(root=str(tmp / "folder"), image_size=cfg.folder_size,
                                              batch_size=folder_batch), "folder"),
    }
    loaders = {}
    with warnings.catch_warnings():
        # torch warns that 8 workers exceed this machine's cores; 8 is the module's default, which is measured here.
        warnings.simplefilter("ignore", UserWarning)
        for title, (dm, _) in modules.items():
            dm.setup("fit")
            loaders[title] = dm.train_dataloader()
            _epoch_seconds_per_image(loaders[title])  # starts (persistent) workers; not timed

    # The networks the loaders feed: ResNet-20 on 32×32 batches of 128; ResNet-18 (the cheapest residual ImageNet
    # network) on image_size crops, at a small batch because a CPU step at 224 takes seconds.
    nets = {"cifar": (resnet20(), cfg.batch, 32), "folder": (build_model("resnet18", num_classes=2),
                                                             cfg.folder_model_batch, cfg.folder_size)}
    steps = {}
    for key, (net, batch, size) in nets.items():
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
        steps[key] = (lambda n=net, o=optimizer, x=x, y=y, b=batch: timed(lambda: train_step(n, o, x, y)) / b)
        steps[key]()  # warm-up

    arms = {**{f"load {t}": (lambda ld=ld: _epoch_seconds_per_image(ld)) for t, ld in loaders.items()},
            **{f"step {k}": fn for k, fn in steps.items()}}
    t = interleave(arms, deadline, cfg.rounds)
    rows = []
    for title, (dm, key) in modules.items():
        load, step = t[f"load {title}"], t[f"step {key}"]
        shares = [lo / (lo + st) for lo, st in zip(load, step)]
        workers = dm.num_workers
        net = "ResNet-20" if key == "cifar" else "ResNet-18"
        rows.append(Row("data", f"{title} loader share of a {net} step ({workers} workers)",
                        1 / statistics.median(load), 1 / statistics.median(step), "img/s",
                        statistics.median(shares), min(shares), max(shares), len(shares), GOALS["data"],
                        note="a: loader images/s, b: training images/s"))
    return rows


# -- fast paths and memory (fresh processes for compile and memory) ------------------------------------------------


def _run_probe(function: str, args: dict[str, Any], timeout: float) -> dict[str, Any] | str:
    """Run ``function(args)`` of this module in a fresh Python; its JSON result, or why there is none."""
    code = (f"import json, sys; from lightning_depth.bench import {function}; "
            f"print(json.dumps({function}(json.loads(sys.argv[1]))))")
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                              timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout:.0f} s"
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"failed ({tail[0][:160]})"
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_probe(args: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: the first compiled ResNet-20 step (compilation included), then fp32/compiled rounds."""
    torch.set_num_threads(args["threads"])
    eager = resnet20()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net)
    x, y = torch.randn(args["batch"], 3, 32, 32), torch.randint(0, 10, (args["batch"],))
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    opt_c = torch.optim.SGD(compiled_net.parameters(), lr=0.1, momentum=0.9)
    train_step(eager, opt_e, x, y)
    first = timed(lambda: train_step(compiled, opt_c, x, y))
    arms = {"fp32": lambda: timed(lambda: train_step(eager, opt_e, x, y)),
            "compile": lambda: timed(lambda: train_step(compiled, opt_c, x, y))}
    t = interleave(arms, time.monotonic() + args["budget_s"], args["rounds"])
    return {"first_step_s": first, **t}


def bench_fastpaths(cfg: Config, deadline: float) -> list[Row]:
    step = f"ResNet-20 b{cfg.batch} step"
    rows = [_compile_row(cfg, deadline, step)]  # first: a cold compile needs most of the section's time
    base = resnet20()
    x, y = torch.randn(cfg.batch, 3, 32, 32), torch.randint(0, 10, (cfg.batch,))
    models = {"fp32": base, "channels_last": copy.deepcopy(base).to(memory_format=torch.channels_last),
              "bf16": copy.deepcopy(base)}
    inputs = {"fp32": x, "channels_last": x.contiguous(memory_format=torch.channels_last), "bf16": x}
    arms = {}
    for name, net in models.items():
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        arms[name] = (lambda n=net, o=optimizer, xx=inputs[name], a=name == "bf16":
                      timed(lambda: train_step(n, o, xx, y, autocast=a)))
    for name in ("fp32", "channels_last"):
        arms[name]()  # warm-up
    t = interleave({k: arms[k] for k in ("fp32", "channels_last")}, deadline, cfg.rounds)
    rows.insert(0, paired("fastpaths", f"channels_last speed-up over fp32, {step}", t["channels_last"], t["fp32"],
                          invert=True))
    # Emulated bf16 is an order of magnitude slower here, so it gets the time that is left (at least one pair).
    arms["bf16"]()  # warm-up
    t = interleave({k: arms[k] for k in ("fp32", "bf16")}, deadline, cfg.rounds)
    rows.insert(1, paired("fastpaths", f"bf16 autocast speed-up over fp32, {step}", t["bf16"], t["fp32"],
                          invert=True,
                          note="" if _has_native_bf16() else "this CPU has no native bf16 (AVX512-BF16/AMX): emulated"))
    return rows


def _compile_row(cfg: Config, deadline: float, step: str) -> Row:
    name = f"torch.compile speed-up over fp32, {step}"
    if not cfg.compile:
        return Row("fastpaths", name, None, None, "s", None, note="skipped (--quick or --no-compile)")
    # Half of the section, the other arms need the rest; a warm inductor cache needs a fraction of that.
    limit = max((deadline - time.monotonic()) * 0.5, 30.0)
    result = _run_probe("compile_probe", {"threads": cfg.threads, "batch": cfg.batch, "rounds": cfg.rounds,
                                          "budget_s": limit * 0.3}, timeout=limit)
    if isinstance(result, str):
        return Row("fastpaths", name, None, None, "s", None,
                   note=f"compile {result}; a cold inductor cache compiles for minutes on a slow CPU: rerun "
                        "(kernels are cached) or raise --budget")
    row = paired("fastpaths", name, result["compile"], result["fp32"], invert=True)
    row.note = f"compile time {result['first_step_s'] - row.a:.1f} s (first step less a compiled step)"
    return row


def _has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _rss_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_probe(args: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: how far DenseNet's first forward+backward raises the resident set above where it stood
    before, then the time of further steps."""
    import gc
    import resource

    from lightning_depth.models import build_model

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    net = build_model(args["model"], memory_efficient=args["memory_efficient"])
    x = torch.randn(args["batch"], 3, args["size"], args["size"])
    y = torch.randint(0, 1000, (args["batch"],))

    def step() -> None:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    gc.collect()
    # Importing torch peaks higher than a small step does; Linux resets the high-water mark (VmHWM) on request.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before, peak_field = _rss_kib("VmRSS"), "VmHWM"
    except OSError:
        before, peak_field = None, None
    if before is None:  # elsewhere: the rise of ru_maxrss, blind to anything below an earlier peak
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = _rss_kib(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = [timed(step) for _ in range(args["steps"])]
    return {"peak_mib": (peak - before) / 1024, "step_s": statistics.median(times)}


def bench_memory(cfg: Config, deadline: float) -> list[Row]:
    args = {"threads": cfg.threads, "model": "densenet121", "batch": cfg.memory_batch, "size": cfg.memory_size,
            "steps": 1}
    results: dict[str, list[dict[str, Any]]] = {"efficient": [], "normal": []}
    failures = []

    def arm(name: str) -> Callable[[], float]:
        def run() -> float:
            out = _run_probe("memory_probe", {**args, "memory_efficient": name == "efficient"},
                             timeout=max(deadline - time.monotonic(), 60.0))
            if isinstance(out, str):
                failures.append(out)
                return math.nan
            results[name].append(out)
            return out["step_s"]
        return run

    interleave({"normal": arm("normal"), "efficient": arm("efficient")}, deadline, cfg.memory_rounds)
    title = f"DenseNet-121 memory_efficient / normal, b{cfg.memory_batch} {cfg.memory_size}px"
    if failures or not results["efficient"] or not results["normal"]:
        return [Row("memory", title, None, None, "", None, note=f"probe {failures[0] if failures else 'missing'}")]
    eff, normal = results["efficient"], results["normal"]
    return [
        paired("memory", f"{title}: peak RSS rise of fwd+bwd", [r["peak_mib"] for r in eff],
               [r["peak_mib"] for r in normal], unit="MiB", note="each arm in a fresh process"),
        paired("memory", f"{title}: fwd+bwd time", [r["step_s"] for r in eff], [r["step_s"] for r in normal]),
    ]


# -- report ------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": cores, "load_avg_1min": load, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def _fmt(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.3g} {unit}"


def format_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# {m['cpu']}, {m['cores']} cores (load {m['load_avg_1min']:.1f} at start), torch {m['torch']}, "
             f"{m['torch_threads']} intra-op thread(s); {report['elapsed_s']:.0f} s",
             "# ratio: median over n rounds of A/B measured back to back (speed-ups: B/A); range: min-max; "
             "met: median within the goal, '?' where the range straddles it"]
    header = ("section", "comparison", "A", "B", "ratio", "range", "n", "goal", "met")
    table = [header]
    for r in report["rows"]:
        share = r["section"] == "data"
        ratio = "-" if r["ratio"] is None else (f"{r['ratio']:.1%}" if share else f"{r['ratio']:.3f}")
        span = "-" if r["low"] is None else (f"{r['low']:.1%}-{r['high']:.1%}" if share
                                              else f"{r['low']:.3f}-{r['high']:.3f}")
        goal = "-" if r["goal"] is None else (f"<= {r['goal']:.0%}" if share else f"<= {r['goal']:.2f}")
        met = {None: "-", True: "yes", False: "NO"}[r["met"]] + ("?" if r["settled"] is False else "")
        table.append((r["section"], r["name"], _fmt(r["a"], r["unit"]), _fmt(r["b"], r["unit"]), ratio, span,
                      str(r["n"]), goal, met))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    notes = [f"{r['section']}/{r['name']}: {r['note']}" for r in report["rows"] if r["note"]]
    return "\n".join(lines + (["", "notes:"] + [f"  {n}" for n in notes] if notes else []))


def run(cfg: Config, sections: tuple[str, ...]) -> dict[str, Any]:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    info = machine()
    start = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lightning_depth_bench_") as tmp:
        for i, name in enumerate(sections):
            left = cfg.budget_s - (time.monotonic() - start)
            weight = SHARES[name] / sum(SHARES[s] for s in sections[i:])
            budget = max(left * weight, 1.0)
            deadline = time.monotonic() + budget
            print(f"bench: {name} ({budget:.0f} s) at {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
            if name == "pipeline":
                rows += bench_pipeline(cfg, deadline, Path(tmp))
            elif name == "models":
                rows += bench_models(cfg, deadline)
            elif name == "data":
                rows += bench_data(cfg, deadline, Path(tmp))
            elif name == "fastpaths":
                rows += bench_fastpaths(cfg, deadline)
            else:
                rows += bench_memory(cfg, deadline)
    settings = asdict(cfg)
    return {"machine": info, "settings": settings, "sections": list(sections),
            "elapsed_s": time.monotonic() - start,
            "rows": [{**asdict(r), "met": r.met, "settled": r.settled} for r in rows]}


# -- command line ------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"bench: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lightning_depth bench", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quick", action="store_true", help="tiny sizes and budget, for tests (under a minute)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds the whole bench may take, start-up included (default 250; quick 40)")
    p.add_argument("--rounds", type=int, default=None, help="most paired rounds per comparison (default 5; quick 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: on a shared machine a spinning thread team is slower and "
                        "noisier; 0 keeps torch's default)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile in the fastpaths section")
    return p


def main(argv: list[str]) -> int:
    """``lightning_depth bench [--sections ...] [--format json] [--quick]``: measure and print the table."""
    args = _parser().parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise UsageError(f"bench: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(SECTIONS)}")
    for name in ("budget", "rounds"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"bench: --{name} {value} must be positive")
    if args.threads < 0:
        raise UsageError(f"bench: --threads {args.threads} must be 0 (torch's default) or more")
    overrides: dict[str, Any] = {"threads": args.threads}
    if args.budget is not None:
        overrides["budget_s"] = args.budget
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.no_compile:
        overrides["compile"] = False
    report = run(Config.make(args.quick, **overrides), tuple(dict.fromkeys(sections)))
    print(json.dumps(report, indent=2) if args.format == "json" else format_table(report))
    return 0
