"""scikit-learn's handwritten digits as a tiny image-classification task that ships with the package."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_depth.data.base import LoaderDataModule, TensorImages, stratified_split


class DigitsDataModule(LoaderDataModule):
    """The 1,797 real 8×8 UCI handwritten digits, upsampled to `image_size` RGB, with a fixed stratified split.

    Needs no download (the images ship with scikit-learn), so it is the default task for smoke tests and CPU runs.
    The whole set lives in memory as one tensor; batches are cut from it directly, which is why loading in the main
    process (num_workers=0) is the right default: worker start-up costs more than the loading it would take over.

    Args:
        image_size: side length after bilinear upsampling from 8×8 (at least 8; 32 suits the CIFAR networks).
        augment: random crops of the image zero-padded by image_size // 8 (a one-pixel shift of the 8×8 original).
            No horizontal flip: digits are not mirror-symmetric (a flipped 2 is not a 2). Off by default because
            the task is meant to converge in a minute and be easy to compare across models; the clean split is
            already learnt to ≥95% validation accuracy.
        val_fraction: share of all images held out for validation.
        test_fraction: share of all images held out for testing.
        batch_size: images per batch (per device under DDP).
        num_workers: loader worker processes; 0 loads in the main process.
        pin_memory: page-locked batches for faster host-to-GPU copies; ignored without CUDA.
        persistent_workers: keep workers alive between epochs; ignored when num_workers is 0.
        predict_split: the split ``predict`` runs on: train (without augmentation), val or test; None is test.
    """

    num_classes = 10
    class_names = tuple(str(digit) for digit in range(10))

    def __init__(
        self,
        image_size: int = 32,
        augment: bool = False,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        predict_split: Literal["train", "val", "test"] | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, predict_split)
        if image_size < 8:
            raise ValueError(f"image_size={image_size} must be at least 8, the digits' own resolution")
        if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be positive and sum to less than 1"
            )
        self.image_size = image_size
        self.augment = augment
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.train_dataset: TensorImages | None = None
        self.val_dataset: TensorImages | None = None
        self.test_dataset: TensorImages | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        pixels, labels = load_digits(return_X_y=True)
        images = self._upsample(pixels)
        n = len(labels)
        rest, test = stratified_split(labels, round(self.test_fraction * n))
        train, val = stratified_split(labels[rest], round(self.val_fraction * n))
        train, val = rest[train], rest[val]

        # One grey level for all three channels, measured on the training split only.
        train_pixels = images[torch.from_numpy(train)].float() / 255
        mean, std = train_pixels.mean().item(), train_pixels.std().item()
        stats = dict(mean=(mean,) * 3, std=(std,) * 3)
        targets = torch.from_numpy(labels)
        pad = self.image_size // 8 if self.augment else 0
        self.train_dataset = TensorImages(images[train], targets[train], pad=pad, **stats)
        self.val_dataset = TensorImages(images[val], targets[val], **stats)
        self.test_dataset = TensorImages(images[test], targets[test], **stats)

    def _upsample(self, pixels: np.ndarray) -> torch.Tensor:
        """(N, 64) values 0..16 → (N, 1, S, S) uint8; one stored channel keeps 224-pixel variants small."""
        x = torch.from_numpy(pixels).float().view(-1, 1, 8, 8) / 16
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x * 255).round_().clamp_(0, 255).to(torch.uint8)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)
