"""CIFAR-10/100 held on the training device as uint8 and augmented there a whole batch at a time.

A ResNet-20 step on a GPU takes a few milliseconds, less than a CPU loader needs to crop, flip and copy a batch of
128 images; keeping all 50,000 images on the device (150 MB as uint8) and augmenting them there removes the loader
from the step time. Without a GPU the same code runs on CPU tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_depth.data.base import TensorImages
from lightning_depth.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule
from lightning_depth.errors import UsageError


def crop_flip(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, pad: int) -> Tensor:
    """Zero-pad each image by ``pad``, cut the window at (dy, dx) of the original size and mirror where ``flip``.

    Equals torchvision's ``RandomCrop(size, padding=pad)`` then ``RandomHorizontalFlip()`` with those draws; the
    padding is 0 in pixel space, before normalisation, as there.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    rows = (dy.view(n, 1) + torch.arange(h, device=device)).view(n, 1, h, 1)
    cols = dx.view(n, 1) + torch.arange(w, device=device)
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols).view(n, 1, 1, w)
    return padded[torch.arange(n, device=device).view(n, 1, 1, 1), torch.arange(c, device=device).view(1, c, 1, 1),
                  rows, cols]


class DeviceBatches:
    """One pass over images on a device as (x, y) batches: float normalised images and int64 labels, both there.

    Every random draw of an epoch (order, crop offsets, flips) is made on the CPU from the global torch generator
    when iteration starts, i.e. after ``EpochReseed`` has reseeded it, so a seed gives the same batches on any
    device and a resumed run repeats the uninterrupted one. Under DDP (``torch.distributed`` initialised) every
    rank must see one permutation, but ``EpochReseed`` seeds each rank differently: the permutation is then
    seeded by rank 0's draw, broadcast to all ranks, and each rank takes every world_size-th image of it, padded
    by repetition to equal shares as ``DistributedSampler`` does. Crops and flips stay per rank. Lightning
    injects a ``DistributedSampler`` only into a ``DataLoader``, so it leaves this iterable alone.

    Args:
        images: (N, C, H, W) uint8 pixels on the device.
        labels: (N,) class indices on the device.
        mean: per-channel mean subtracted after scaling pixels to 0..1.
        std: per-channel standard deviation divided by.
        batch_size: images per batch; the last batch of a pass may be smaller.
        shuffle: a new order every pass.
        pad: zero padding on each side before a random crop back to (H, W); 0 disables the crop.
        flip: random horizontal flip with probability 1/2.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Tensor,
        std: Tensor,
        batch_size: int,
        shuffle: bool,
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        self.images, self.labels = images, labels.long()
        self.mean = mean.to(images.device, torch.float32).view(1, -1, 1, 1)
        self.std = std.to(images.device, torch.float32).view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.pad, self.flip = batch_size, shuffle, pad, flip

    def _world(self) -> tuple[int, int]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _rank0_seed(self) -> int:
        # Each rank draws from its own generator; rank 0's draw is broadcast, so all share one permutation.
        seed = torch.randint(0, 2**62, (1,)).to(self.images.device)
        torch.distributed.broadcast(seed, src=0)
        return int(seed.item())

    def _order(self) -> Tensor:
        n = len(self.labels)
        rank, world = self._world()
        if not self.shuffle:
            order = torch.arange(n)
        elif world == 1:
            order = torch.randperm(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self._rank0_seed()))
        if world > 1:
            share = math.ceil(n / world)
            order = torch.cat([order, order[: share * world - n]])[rank::world]
        return order

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.labels) / self._world()[1]) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: nothing is drawn until the first batch is asked for, which Lightning does after the
        # epoch-start hooks (it creates the iterator of the first epoch before them).
        order = self._order()
        m = len(order)
        dy = torch.randint(0, 2 * self.pad + 1, (m,)) if self.pad else torch.zeros(m, dtype=torch.long)
        dx = torch.randint(0, 2 * self.pad + 1, (m,)) if self.pad else torch.zeros(m, dtype=torch.long)
        flips = torch.rand(m) < 0.5 if self.flip else torch.zeros(m, dtype=torch.bool)
        device = self.images.device
        order, dy, dx, flips = (t.to(device, non_blocking=True) for t in (order, dy, dx, flips))
        for start in range(0, m, self.batch_size):
            index = order[start : start + self.batch_size]
            x = self.images[index]
            if self.pad or self.flip:
                end = start + len(index)
                x = crop_flip(x, dy[start:end], dx[start:end], flips[start:end], self.pad)
            # Same arithmetic as TensorImages, so the CPU path matches CIFAR10DataModule's batches exactly.
            x = (x.float().div_(255) - self.mean) / self.std
            yield x, self.labels[index]


class _GPUCIFAR(LightningDataModule):
    """The CIFAR module of `cifar.py` read once, then served from the device by ``DeviceBatches``."""

    source: type[CIFARDataModule]
    num_classes: int
    in_channels = 3
    image_size = CIFARDataModule.image_size

    def __init__(self, root: str, download: bool, val_split: int, augment: bool, batch_size: int, device: str,
                 predict_split: str | None = None) -> None:
        super().__init__()
        # Reading, checks, download and the fixed validation split are the CPU module's; only serving differs.
        self.cpu = self.source(root=root, download=download, val_split=val_split, augment=augment,
                               batch_size=batch_size, num_workers=0, pin_memory=False, persistent_workers=False,
                               predict_split=predict_split)
        if device != "auto":
            try:
                torch.device(device)
            except RuntimeError as err:
                raise ValueError(f"device={device!r} is not a torch device; try 'auto', 'cuda', 'cuda:1' or 'cpu'") \
                    from err
        self.batch_size = batch_size
        self.device_name = device
        self.device: torch.device | None = None
        self.train_batches: DeviceBatches | None = None
        self.val_batches: DeviceBatches | None = None
        self.test_batches: DeviceBatches | None = None
        self.save_hyperparameters()

    def _resolve_device(self) -> torch.device:
        if self.device_name == "auto":
            if self.trainer is not None:
                return self.trainer.strategy.root_device  # each DDP rank holds its copy on its own GPU
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device_name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"device={self.device_name!r} but no CUDA GPU is visible; pass --data.init_args.device "
                             "auto to fall back to the CPU")
        return device

    def prepare_data(self) -> None:
        self.cpu.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.train_batches is not None:
            return
        self.cpu.setup(stage)
        self.device = self._resolve_device()
        self.train_batches = self._on_device(self.cpu.train_dataset, shuffle=True)
        self.test_batches = self._on_device(self.cpu.test_dataset, shuffle=False)
        # With val_split=0 validation is the test split itself: one copy on the device.
        same = self.cpu.val_dataset is self.cpu.test_dataset
        self.val_batches = self.test_batches if same else self._on_device(self.cpu.val_dataset, shuffle=False)
        self.cpu.train_dataset = self.cpu.val_dataset = self.cpu.test_dataset = None  # free the host copies

    def _on_device(self, data: TensorImages, shuffle: bool) -> DeviceBatches:
        return DeviceBatches(data.images.to(self.device), data.labels.to(self.device), data.mean, data.std,
                             self.batch_size, shuffle, pad=data.pad, flip=data.flip)

    def train_dataloader(self) -> DeviceBatches:
        return self.train_batches

    def val_dataloader(self) -> DeviceBatches:
        return self.val_batches

    def test_dataloader(self) -> DeviceBatches:
        return self.test_batches

    @property
    def class_names(self) -> Sequence[str] | None:
        return self.cpu.class_names

    def predict_dataloader(self) -> DataLoader:
        # A DataLoader over the images already on the device (in order, without augmentation), so that Lightning
        # knows each prediction's index and shards the images under DDP as for any other module.
        batches = {"train": self.train_batches, "val": self.val_batches}.get(self.cpu.predict_split or "test",
                                                                            self.test_batches)
        images = TensorImages(batches.images, batches.labels, self.cpu.mean, self.cpu.std)
        return DataLoader(images, batch_size=self.batch_size, shuffle=False)


class GPUCIFAR10DataModule(_GPUCIFAR):
    """CIFAR-10 on the training device: the papers' pad-4 crop and flip, per image, done there in batches.

    Reads the same `cifar-10-batches-py/` as ``CIFAR10DataModule`` with the same split and normalisation; batches
    arrive already on the device, so there are no loader workers. DDP: each rank holds the whole set on its own
    GPU and takes every world_size-th image of a permutation shared by all ranks (see ``DeviceBatches``).

    Args:
        root: folder holding (or receiving) the extracted `cifar-10-batches-py/`.
        download: fetch the archive with torchvision when it is missing (needs network access).
        val_split: training images held out for validation (fixed seed, stratified), as in ``CIFAR10DataModule``;
            0 trains on all 50k and validates on the test set.
        augment: 4-pixel zero padding, random 32×32 crop and horizontal flip (He et al. 2015 §4.2).
        batch_size: images per batch (per device under DDP); 128 as in He et al.
        device: where the images live: "auto" is the Trainer's device (the GPU of each DDP rank), else CUDA when
            visible, else the CPU; or a torch device such as "cuda:1" or "cpu".
        predict_split: the split ``predict`` runs on: train (without augmentation), val or test; None is test.
    """

    source = CIFAR10DataModule
    num_classes = CIFAR10DataModule.num_classes

    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = False,
        val_split: int = 5000,
        augment: bool = True,
        batch_size: int = 128,
        device: str = "auto",
        predict_split: Literal["train", "val", "test"] | None = None,
    ) -> None:
        super().__init__(root, download, val_split, augment, batch_size, device, predict_split)


class GPUCIFAR100DataModule(_GPUCIFAR):
    """CIFAR-100 on the training device, as ``GPUCIFAR10DataModule`` does CIFAR-10.

    Args:
        root: folder holding (or receiving) the extracted `cifar-100-python/`.
        download: fetch the archive with torchvision when it is missing (needs network access).
        val_split: training images held out for validation (fixed seed, stratified); 0 validates on the test set.
        augment: 4-pixel zero padding, random 32×32 crop and horizontal flip ("C100+", Huang et al. 2017).
        batch_size: images per batch (per device under DDP).
        device: "auto" (the Trainer's device, else CUDA when visible, else CPU) or a torch device.
        predict_split: the split ``predict`` runs on: train (without augmentation), val or test; None is test.
    """

    source = CIFAR100DataModule
    num_classes = CIFAR100DataModule.num_classes

    def __init__(
        self,
        root: str = "data/cifar100",
        download: bool = False,
        val_split: int = 5000,
        augment: bool = True,
        batch_size: int = 128,
        device: str = "auto",
        predict_split: Literal["train", "val", "test"] | None = None,
    ) -> None:
        super().__init__(root, download, val_split, augment, batch_size, device, predict_split)
