"""One GPU, a few minutes: training throughput, CIFAR epoch times with the GPU-resident loader, the pipeline against
a plain loop, and the projected wall time of the paper-scale pre-activation ablation. What it measures and how to
run it: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_depth.bench.timing import timed, train_step
from lightning_depth.data import GPUCIFAR10DataModule
from lightning_depth.data.cifar import CIFAR10DataModule
from lightning_depth.data.synthetic import write_synthetic_cifar
from lightning_depth.models import ResNet, build_model
from lightning_depth.module import ImageClassifier

ABLATION = {"arms": 2, "seeds": 3, "epochs": 164, "steps_per_epoch": 391}  # He et al. 2016: 64k iterations
PIPELINE_GOAL = 1.02


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    cuda = device.type == "cuda"
    driver = None
    if cuda:
        try:
            import pynvml  # nvidia-ml-py, shipped beside CUDA builds of torch

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001 - the driver version is informative only
            driver = None
    return {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "driver": driver,
            "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "torch": torch.__version__,
            "lightning": lightning.__version__, "python": platform.python_version()}


def imagenet_throughput(device: torch.device, batch: int, size: int, steps: int, compile: bool) -> dict[str, Any]:
    """Images/s of SGD steps of ResNet-50 in bf16 autocast and channels_last on synthetic images on the device."""
    net = build_model("resnet50", stride_in_3x3=True, shortcut="B").to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    model = torch.compile(net) if compile else net

    def run(n: int) -> None:
        for _ in range(n):
            train_step(model, optimizer, x, y, autocast=True)
        sync(device)

    first = timed(lambda: run(1))
    run(max(steps // 5, 1))  # warm-up: allocator, cuDNN algorithm choice
    per_step = timed(lambda: run(steps)) / steps
    result = {"batch": batch, "size": size, "images_per_s": batch / per_step, "step_s": per_step}
    if compile:
        result["compile_s"] = first - per_step
    return result


class EpochClock(Callback):
    """Seconds of each training epoch and each validation pass (device synchronised at both ends). Lightning
    validates inside the training epoch, so a training epoch's time excludes its validation pass."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.train: list[float] = []
        self.val: list[float] = []
        self.batches: list[int] = []
        self.started = self.val_started = self.validating = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        sync(self.device)
        self.started = time.perf_counter()
        self.validating = 0.0

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        sync(self.device)
        self.train.append(time.perf_counter() - self.started - self.validating)
        self.batches.append(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        sync(self.device)
        self.val_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        sync(self.device)
        if not trainer.sanity_checking:
            self.val.append(time.perf_counter() - self.val_started)
            self.validating += self.val[-1]


def cifar_epochs(root: Path, device: torch.device, depth: int, preact: bool, batch: int, epochs: int,
                 limit_train_batches: int | float, limit_val_batches: int | float, precision: str) -> dict[str, Any]:
    """Train a CIFAR ResNet with the pipeline for ``epochs`` epochs; times of the last epoch's training and
    validation, and seconds per training step."""
    seed_everything(0)
    net = ResNet(depth=depth, stem="cifar", preact=preact, num_classes=10)
    model = ImageClassifier(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4))
    clock = EpochClock(device)
    trainer = Trainer(accelerator=device.type if device.type == "cpu" else "gpu", devices=1, max_epochs=epochs,
                      precision=precision, benchmark=device.type == "cuda", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_train_batches=limit_train_batches,
                      limit_val_batches=limit_val_batches, callbacks=[clock])
    trainer.fit(model, GPUCIFAR10DataModule(root=str(root), val_split=0, batch_size=batch))
    steps = clock.batches[-1]
    val = clock.val[-1] if clock.val else 0.0
    return {"depth": depth, "preact": preact, "batch": batch, "train_epoch_s": clock.train[-1], "val_s": val,
            "steps": steps, "step_s": clock.train[-1] / steps, "epoch_s": clock.train[-1] + val}


def plain_epoch(root: Path, device: torch.device, depth: int, batch: int, precision: str,
                limit_batches: int | None) -> dict[str, Any]:
    """The same network, optimizer and GPU-resident batches in a plain PyTorch loop: seconds of the second epoch."""
    torch.manual_seed(0)
    net = ResNet(depth=depth, stem="cifar", num_classes=10).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    data = GPUCIFAR10DataModule(root=str(root), val_split=0, batch_size=batch, device=str(device))
    data.setup("fit")
    steps = 0

    def epoch() -> None:
        nonlocal steps
        steps = 0
        for x, y in data.train_dataloader():
            train_step(net, optimizer, x, y, autocast=precision.startswith("bf16"))
            steps += 1
            if limit_batches is not None and steps == limit_batches:
                break
        sync(device)

    times = [timed(epoch) for _ in range(2)]  # the first epoch warms up the allocator and cuDNN's algorithm choice
    return {"depth": depth, "train_epoch_s": times[-1], "steps": steps}


def cifar_root(given: str | None, tmp: Path, smoke: bool) -> tuple[Path, str]:
    """The CIFAR-10 folder to read: the one given when it holds the data, else synthetic files in the format."""
    if given and (Path(given) / CIFAR10DataModule.folder / "data_batch_1").is_file():
        return Path(given), f"CIFAR-10 at {given}"
    per_file, test = (64, 64) if smoke else (10_000, 10_000)
    return write_synthetic_cifar(tmp / "cifar", per_file=per_file, test=test), \
        f"synthetic CIFAR-10-format files ({5 * per_file} training, {test} test images)"


def measure_cifar(args: argparse.Namespace, device: torch.device, root: Path, step: Callable[[str], None],
                  report: dict[str, Any]) -> None:
    """ResNet-20 and -110 epochs, the pipeline against a plain loop, and ResNet-164 steps for the projection."""
    smoke = args.smoke
    kw = dict(batch=8 if smoke else 128, precision=args.precision, epochs=2, limit_val_batches=1 if smoke else 1.0)
    for depth in (20, 110):
        step(f"CIFAR ResNet-{depth} epochs")
        report[f"resnet{depth}_cifar"] = cifar_epochs(root, device, depth, False,
                                                      limit_train_batches=2 if smoke else 1.0, **kw)
    # The pipeline's cost over a plain loop where a step takes milliseconds and Python overhead could show.
    step("CIFAR ResNet-20 plain loop")
    plain = plain_epoch(root, device, 20, kw["batch"], args.precision, 2 if smoke else None)
    ratio = report["resnet20_cifar"]["train_epoch_s"] / plain["train_epoch_s"]
    report["resnet20_plain_loop"] = {**plain, "pipeline_over_plain": ratio, "goal": PIPELINE_GOAL}
    arms = {}
    for preact in (False, True):
        step(f"ResNet-164 preact={preact} steps")
        arms["pre" if preact else "post"] = cifar_epochs(root, device, 164, preact,
                                                         limit_train_batches=2 if smoke else 60, **kw)
        report["resnet164_cifar"] = dict(arms)
    a = ABLATION
    per_arm = {k: a["seeds"] * a["epochs"] * (a["steps_per_epoch"] * r["step_s"] + r["val_s"]) / 3600
               for k, r in arms.items()}
    report["ablation_projection"] = {**a, "precision": args.precision, "hours": sum(per_arm.values()),
                                     "hours_per_arm": per_arm}


def measure(args: argparse.Namespace, device: torch.device, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every measurement, cheapest first and compilation last; ``save`` receives the report after each, so a run
    cut short keeps what it measured."""
    smoke = args.smoke
    env = environment(device)
    report: dict[str, Any] = {"device": env["device"], "torch": env["torch"], "smoke": smoke, "environment": env,
                              "complete": False}
    start = time.monotonic()

    def step(what: str) -> None:
        report["elapsed_s"] = time.monotonic() - start
        save(report)
        print(f"{what} ...", file=sys.stderr, flush=True)

    size, batch, steps = (32, 2, 2) if smoke else (224, args.imagenet_batch, 30)
    step("ResNet-50 eager")
    report["resnet50_eager"] = imagenet_throughput(device, batch, size, steps, compile=False)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root, report["cifar_data"] = cifar_root(args.cifar_root, Path(tmp), smoke)
        measure_cifar(args, device, root, step, report)
    if not smoke and not args.no_compile:
        step("ResNet-50 compiled")
        report["resnet50_compiled"] = imagenet_throughput(device, batch, size, steps, compile=True)
    report["complete"] = True
    report["elapsed_s"] = time.monotonic() - start
    save(report)
    return report


def table(report: dict[str, Any]) -> str:
    smoke = " (smoke: tiny sizes, numbers meaningless)" if report["smoke"] else ""
    lines = [f"# {report['device']}, torch {report['torch']}{smoke}"]
    for key in ("resnet50_eager", "resnet50_compiled"):
        if key in report:
            r = report[key]
            extra = f", compile {r['compile_s']:.0f} s" if "compile_s" in r else ""
            lines.append(f"{key:<22} {r['images_per_s']:10.0f} img/s  (batch {r['batch']}, {r['size']}px, bf16, "
                         f"channels_last{extra})")
    lines.append(f"cifar data             {report['cifar_data']}")
    for key in ("resnet20_cifar", "resnet110_cifar"):
        r = report[key]
        lines.append(f"{key:<22} {r['epoch_s']:10.2f} s/epoch  (train {r['train_epoch_s']:.2f} s over {r['steps']} "
                     f"steps, validation {r['val_s']:.2f} s)")
    r = report["resnet20_plain_loop"]
    lines.append(f"resnet20_plain_loop    {r['train_epoch_s']:10.2f} s/epoch  (training only; pipeline / plain = "
                 f"{r['pipeline_over_plain']:.3f}, goal <= {r['goal']})")
    for arm in ("post", "pre"):
        r = report["resnet164_cifar"][arm]
        lines.append(f"resnet164_{arm:<12} {r['step_s'] * 1000:10.1f} ms/step  (validation pass {r['val_s']:.2f} s)")
    p = report["ablation_projection"]
    lines.append(f"ablation projection    {p['hours']:10.1f} h  ({p['arms']} arms × {p['seeds']} seeds × "
                 f"{p['epochs']} epochs × {p['steps_per_epoch']} steps, {p['precision']}, one run at a time)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is (CPU here)")
    parser.add_argument("--cifar-root", default=None, help="folder holding cifar-10-batches-py/ (default: synthetic)")
    parser.add_argument("--precision", default="32-true", help="Trainer precision of the CIFAR runs (the recipe: 32)")
    parser.add_argument("--imagenet-batch", type=int, default=256, help="ResNet-50 batch (256 as in He et al.)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--json", default=None,
                        help="also write the JSON report to this file, after every measurement ('complete': false "
                             "until the last)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA GPU visible, nothing measured; run it on a GPU machine "
              "(or pass --smoke for a CPU check of this script)", file=sys.stderr)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # the smoke run only checks the script; one thread is steadiest on a busy machine

    def save(report: dict[str, Any]) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(report) + "\n")

    report = measure(args, device, save)
    print(table(report))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
