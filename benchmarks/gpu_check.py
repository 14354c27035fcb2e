"""One GPU, about five minutes: training throughput, CIFAR epoch times with the GPU-resident loader, and the
projected wall time of the paper-scale pre-activation ablation.

    python benchmarks/gpu_check.py                            # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --cifar-root data/cifar10  # real CIFAR-10 (else synthetic files, same format)
    python benchmarks/gpu_check.py --smoke                    # tiny sizes on the CPU: checks this script runs

Measures
* ResNet-50 at 224×224 (torchvision's configuration: stride in the 3×3, projection shortcuts), bf16 autocast,
  channels_last, SGD steps on synthetic images already on the GPU: images/s eager and under torch.compile (with
  the compile time).
* CIFAR ResNet-20 and ResNet-110 (He et al. 2015 §4.2, batch 128) trained by ImageClassifier + Trainer from
  GPUCIFAR10DataModule: the time of a whole epoch (training and validation), the second one, after warm-up.
* The pipeline against a plain PyTorch loop on the same network, optimizer and GPU-resident batches (ResNet-20,
  training epoch time; goal ≤ 1.02), where a step takes milliseconds and per-step Python overhead could show.
* ResNet-164 with and without pre-activation (He et al. 2016): seconds per training step, measured on part of an
  epoch, projected to the ablation: 2 arms × 3 seeds × 164 epochs of 391 steps (64k iterations on 50k images)
  plus a validation pass per epoch, run one after another on this GPU.

Prints a table, then the same numbers as one line of JSON (also written to --json PATH). Without a GPU (and
without --smoke) it says so and exits with status 0; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ABLATION = {"arms": 2, "seeds": 3, "epochs": 164, "steps_per_epoch": 391}  # He et al. 2016: 64k iterations


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def imagenet_throughput(device: torch.device, batch: int, size: int, steps: int, compile: bool) -> dict[str, Any]:
    """Images/s of SGD steps of ResNet-50 in bf16 autocast and channels_last on synthetic images on the device."""
    from lightning_depth.models import build_model

    net = build_model("resnet50", stride_in_3x3=True, shortcut="B").to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    model = torch.compile(net) if compile else net

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(max(steps // 5, 1)):  # warm-up: allocator, cuDNN algorithm choice
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    per_step = (time.perf_counter() - start) / steps
    result = {"batch": batch, "size": size, "images_per_s": batch / per_step, "step_s": per_step}
    if compile:
        result["compile_s"] = first - per_step
    return result


class EpochClock:
    """Seconds of each training epoch and each validation pass (device synchronised at both ends). Lightning
    validates inside the training epoch, so a training epoch's time excludes its validation pass."""

    def __init__(self, device: torch.device) -> None:
        from lightning.pytorch import Callback

        clock = self

        class _Hooks(Callback):
            def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                sync(device)
                clock.started = time.perf_counter()
                clock.validating = 0.0

            def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                sync(device)
                clock.train.append(time.perf_counter() - clock.started - clock.validating)
                clock.batches.append(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

            def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
                sync(device)
                clock.val_started = time.perf_counter()

            def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                sync(device)
                if not trainer.sanity_checking:
                    clock.val.append(time.perf_counter() - clock.val_started)
                    clock.validating += clock.val[-1]

        self.callback = _Hooks()
        self.train: list[float] = []
        self.val: list[float] = []
        self.batches: list[int] = []
        self.started = self.val_started = self.validating = 0.0


def cifar_epochs(root: Path, device: torch.device, depth: int, preact: bool, batch: int, epochs: int,
                 limit_train_batches: int | float, limit_val_batches: int | float, precision: str) -> dict[str, Any]:
    """Train a CIFAR ResNet with the pipeline for ``epochs`` epochs; times of the last epoch's training and
    validation, and seconds per training step."""
    from lightning.pytorch import Trainer, seed_everything

    from lightning_depth.data import GPUCIFAR10DataModule
    from lightning_depth.models import ResNet
    from lightning_depth.module import ImageClassifier

    seed_everything(0)
    net = ResNet(depth=depth, stem="cifar", preact=preact, num_classes=10)
    model = ImageClassifier(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4))
    clock = EpochClock(device)
    trainer = Trainer(accelerator=device.type if device.type == "cpu" else "gpu", devices=1, max_epochs=epochs,
                      precision=precision, benchmark=device.type == "cuda", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_train_batches=limit_train_batches,
                      limit_val_batches=limit_val_batches, callbacks=[clock.callback])
    data = GPUCIFAR10DataModule(root=str(root), val_split=0, batch_size=batch)
    trainer.fit(model, data)
    steps = clock.batches[-1]
    return {"depth": depth, "preact": preact, "batch": batch, "train_epoch_s": clock.train[-1],
            "val_s": clock.val[-1] if clock.val else 0.0, "steps": steps, "step_s": clock.train[-1] / steps,
            "epoch_s": clock.train[-1] + (clock.val[-1] if clock.val else 0.0)}


def plain_epoch(root: Path, device: torch.device, depth: int, batch: int, precision: str,
                limit_batches: int | None) -> dict[str, Any]:
    """The same network, optimizer and GPU-resident batches in a plain PyTorch loop: seconds of the second epoch."""
    from lightning_depth.data import GPUCIFAR10DataModule
    from lightning_depth.models import ResNet

    torch.manual_seed(0)
    net = ResNet(depth=depth, stem="cifar", num_classes=10).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    data = GPUCIFAR10DataModule(root=str(root), val_split=0, batch_size=batch, device=str(device))
    data.setup("fit")
    autocast = precision.startswith("bf16")
    times = []
    for _ in range(2):  # the first epoch warms up the allocator and cuDNN's algorithm choice
        sync(device)
        start = time.perf_counter()
        steps = 0
        for x, y in data.train_dataloader():
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            steps += 1
            if limit_batches is not None and steps == limit_batches:
                break
        sync(device)
        times.append(time.perf_counter() - start)
    return {"depth": depth, "train_epoch_s": times[-1], "steps": steps}


def cifar_root(given: str | None, tmp: Path, smoke: bool) -> tuple[Path, str]:
    """The CIFAR-10 folder to read: the one given when it holds the data, else synthetic files in the format."""
    from lightning_depth.bench import write_synthetic_cifar
    from lightning_depth.data.cifar import CIFAR10DataModule

    if given and (Path(given) / CIFAR10DataModule.folder / "data_batch_1").is_file():
        return Path(given), f"CIFAR-10 at {given}"
    per_file, test = (64, 64) if smoke else (10_000, 10_000)
    return write_synthetic_cifar(tmp / "cifar", per_file=per_file, test=test), \
        f"synthetic CIFAR-10-format files ({5 * per_file} training, {test} test images)"


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    smoke = args.smoke
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "smoke": smoke}
    size, batch, steps = (32, 2, 2) if smoke else (224, args.imagenet_batch, 30)
    print("ResNet-50 eager ...", file=sys.stderr, flush=True)
    report["resnet50_eager"] = imagenet_throughput(device, batch, size, steps, compile=False)
    if not smoke and not args.no_compile:
        print("ResNet-50 compiled ...", file=sys.stderr, flush=True)
        report["resnet50_compiled"] = imagenet_throughput(device, batch, size, steps, compile=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root, source = cifar_root(args.cifar_root, Path(tmp), smoke)
        report["cifar_data"] = source
        epochs_kw = dict(batch=8 if smoke else 128, precision=args.precision, epochs=2,
                         limit_val_batches=1 if smoke else 1.0)
        for depth in (20, 110):
            print(f"CIFAR ResNet-{depth} epochs ...", file=sys.stderr, flush=True)
            report[f"resnet{depth}_cifar"] = cifar_epochs(root, device, depth, False,
                                                          limit_train_batches=2 if smoke else 1.0, **epochs_kw)
        # The pipeline's cost over a plain loop where a step takes milliseconds and Python overhead could show.
        print("CIFAR ResNet-20 plain loop ...", file=sys.stderr, flush=True)
        plain = plain_epoch(root, device, 20, epochs_kw["batch"], args.precision, 2 if smoke else None)
        pipeline = report["resnet20_cifar"]
        ratio = pipeline["train_epoch_s"] / plain["train_epoch_s"]
        report["resnet20_plain_loop"] = {**plain, "pipeline_over_plain": ratio, "goal": 1.02}
        arms = {}
        for preact in (False, True):
            print(f"ResNet-164 preact={preact} steps ...", file=sys.stderr, flush=True)
            arms[preact] = cifar_epochs(root, device, 164, preact, limit_train_batches=2 if smoke else 60,
                                        **epochs_kw)
    a = ABLATION
    per_arm = [a["seeds"] * a["epochs"] * (a["steps_per_epoch"] * r["step_s"] + r["val_s"]) for r in arms.values()]
    report["resnet164_cifar"] = {"post": arms[False], "pre": arms[True]}
    report["ablation_projection"] = {**a, "precision": args.precision, "hours": sum(per_arm) / 3600,
                                     "hours_per_arm": {"post": per_arm[0] / 3600, "pre": per_arm[1] / 3600}}
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is (CPU here)")
    parser.add_argument("--cifar-root", default=None, help="folder holding cifar-10-batches-py/ (default: synthetic)")
    parser.add_argument("--precision", default="32-true", help="Trainer precision of the CIFAR runs (the recipe: 32)")
    parser.add_argument("--imagenet-batch", type=int, default=256, help="ResNet-50 batch (256 as in He et al.)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    parser.add_argument("--json", default=None, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA GPU visible, nothing measured; run it on a GPU machine "
              "(or pass --smoke for a CPU check of this script)", file=sys.stderr)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # the smoke run only checks the script; one thread is steadiest on a busy machine
    report = measure(args, device)
    print(table(report))
    line = json.dumps(report)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
