"""The fast paths are configuration, and train like the fp32 baseline: channels_last and ``trainer.benchmark``
(nearly) exactly, bf16-mixed within bf16's precision, torch.compile within float rounding."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_depth.data import DigitsDataModule
from lightning_depth.models import ResNet
from lightning_depth.module import ImageClassifier

STEPS = 4


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def train(precision: str = "32-true", benchmark: bool | None = None, **module_options) -> torch.Tensor:
    """Training losses of a few steps of a CIFAR ResNet-8 on 8×8 digits, everything seeded alike."""
    seed_everything(0, workers=True)
    net = ResNet(depth=8, stem="cifar", num_classes=10)
    model = ImageClassifier(net, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), **module_options)
    losses = Losses()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=STEPS, precision=precision, benchmark=benchmark,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[losses])
    trainer.fit(model, DigitsDataModule(image_size=8, batch_size=16))
    return torch.tensor(losses.values)


@pytest.fixture(scope="module")
def fp32() -> torch.Tensor:
    return train()


def test_baseline_learns(fp32):
    assert len(fp32) == STEPS and torch.isfinite(fp32).all()
    assert fp32[-1] < fp32[0]


def test_channels_last_trains_like_fp32(fp32):
    # Same arithmetic in another memory layout: only the summation order of the convolutions differs.
    torch.testing.assert_close(train(channels_last=True), fp32, rtol=1e-4, atol=1e-4)


def test_cudnn_benchmark_changes_nothing_on_cpu(fp32):
    torch.testing.assert_close(train(benchmark=True), fp32, rtol=0, atol=0)


def test_bf16_mixed_trains_like_fp32_within_bf16_precision(fp32):
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-8 ≈ 0.4%); over a few steps the losses stay within ~2%.
    bf16 = train(precision="bf16-mixed")
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16, fp32, rtol=0.03, atol=0.03)


@pytest.mark.slow  # bf16 convolutions are emulated (slow) on CPUs without AVX512-BF16 or AMX
def test_channels_last_with_bf16_mixed_trains_like_fp32(fp32):
    torch.testing.assert_close(train(precision="bf16-mixed", channels_last=True), fp32, rtol=0.03, atol=0.03)


@pytest.mark.slow  # inductor compiles C++ kernels: tens of seconds on a small CPU, less with a warm cache
def test_compile_trains_like_fp32(fp32):
    torch.testing.assert_close(train(compile=True), fp32, rtol=1e-3, atol=1e-3)
