"""Pieces shared by the data modules: loader options, an in-memory image dataset, a fixed stratified split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

# Validation and test splits are drawn with this seed, never the training seed, so every run of every trial
# sees the same held-out images.
SPLIT_SEED = 0


class LoaderDataModule(LightningDataModule):
    """Data module base holding the DataLoader options every module shares.

    Args:
        batch_size: images per batch (per device under DDP).
        num_workers: loader worker processes; 0 loads in the main process.
        pin_memory: page-locked batches for faster host-to-GPU copies; ignored without CUDA.
        persistent_workers: keep workers alive between epochs; ignored when num_workers is 0.
    """

    in_channels = 3
    num_classes: int

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool, persistent_workers: bool) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be 0 (main process) or more")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        # Records the init arguments of the concrete subclass too, so checkpoints carry the data config.
        self.save_hyperparameters()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        workers = self.num_workers > 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers,
        )


class TensorImages(Dataset):
    """Images held as one tensor (N, C, H, W), augmented and normalised a whole batch at a time.

    The DataLoader hands `__getitems__` the batch's indices, so cropping, flipping and normalising are a few tensor
    operations per batch rather than per image, which keeps small-image training from waiting on the loader.
    Pixels are uint8 (0..255) or float (0..1); padding is zero in pixel space (black), as in the papers' CIFAR
    recipe, before normalisation.

    Args:
        images: (N, C, H, W) pixels; C may be 1 and is repeated to `len(mean)` channels.
        labels: (N,) integer class indices.
        mean: per-channel mean subtracted after scaling pixels to 0..1.
        std: per-channel standard deviation divided by.
        pad: zero padding on each side before a random crop back to (H, W); 0 disables the crop.
        flip: random horizontal flip with probability 1/2.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        pad: int = 0,
        flip: bool = False,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[index]
        if self.pad:
            x = random_crop(x, self.pad)
        if self.flip:
            flipped = torch.rand(len(x)) < 0.5
            x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(-1), x)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        x = (x - self.mean) / self.std  # broadcasting also repeats a single stored channel
        return list(zip(x.unbind(0), self.labels[index].unbind(0)))


def random_crop(x: Tensor, pad: int) -> Tensor:
    """Zero-pad a batch by `pad` on each side and cut one random window of the original size from each image."""
    _, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (len(x), 2)).tolist()
    # A loop of slices beats one gather with broadcast indices on CPU by several times at these sizes.
    return torch.stack([image[:, top : top + h, left : left + w] for image, (top, left) in zip(padded, offsets)])


def stratified_split(labels: np.ndarray, held_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out) with `held_out` items and the class proportions of `labels` in both parts."""
    index = np.arange(len(labels))
    kept, out = train_test_split(index, test_size=held_out, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(kept), np.sort(out)
