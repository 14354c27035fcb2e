"""Datasets written in the real on-disk formats with random content, for tests and benchmarks (nothing is
downloaded): CIFAR's pickled batches and an ImageNet-style folder of JPEGs; and random batches of a data module's
shape, for timing a network before its data is fetched."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from lightning_depth.data.cifar import CIFAR10DataModule, CIFAR100DataModule


def write_synthetic_cifar(root: Path, module: type[CIFAR10DataModule] | type[CIFAR100DataModule] = CIFAR10DataModule,
                          per_file: int = 512, test: int = 512) -> Path:
    """Random images in the on-disk format of ``module``: the pickled N×3072 uint8 batches the archive unpacks to
    under ``root/<module.folder>``, with labels cycling through the classes; 5 × ``per_file`` training images
    (CIFAR-100 keeps them in one file) and ``test`` test images. Returns ``root``."""
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
    """``root/{train,val}/class<c>/*.jpg`` with smooth random content, by default at about ImageNet's mean image
    size. Returns ``root``."""
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


class RandomImages(LightningDataModule):
    """Normally distributed images and uniform labels in the shape of another data module: a network's step can be
    timed (``--dry-run``) before that module's data is fetched.

    Args:
        num_classes: number of classes.
        image_size: side of the square images.
        in_channels: image channels.
        batch_size: images per batch.
        batches: training batches per epoch.
    """

    def __init__(self, num_classes: int = 10, image_size: int = 32, in_channels: int = 3, batch_size: int = 128,
                 batches: int = 1) -> None:
        super().__init__()
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, in_channels
        self.batch_size, self.batches = batch_size, batches

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        n = self.batch_size * self.batches
        images = torch.randn(n, self.in_channels, self.image_size, self.image_size, generator=generator)
        labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        return DataLoader(TensorDataset(images, labels), batch_size=self.batch_size)
