"""Pieces shared by the data modules: loader options, an in-memory image dataset, a fixed stratified split."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

# Validation and test splits are drawn with this seed, never the training seed, so every run of every trial
# sees the same held-out images.
SPLIT_SEED = 0
SPLITS = ("train", "val", "test")


class LoaderDataModule(LightningDataModule):
    """Data module base holding the DataLoader options every module shares.

    Args:
        batch_size: images per batch (per device under DDP).
        num_workers: loader worker processes; 0 loads in the main process.
        pin_memory: page-locked batches for faster host-to-GPU copies; ignored without CUDA.
        persistent_workers: keep workers alive between epochs; ignored when num_workers is 0.
        predict_split: the split ``predict`` runs on (None: the test split).
    """

    in_channels = 3
    num_classes: int
    class_names: Sequence[str] | None = None  # index -> name, where the data names its classes

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool, persistent_workers: bool,
                 predict_split: str | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be 0 (main process) or more")
        if predict_split not in (None, *SPLITS):
            raise ValueError(f"predict_split={predict_split!r} is not one of {', '.join(SPLITS)}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.predict_split = predict_split
        # Records the init arguments of the concrete subclass too, so checkpoints carry the data config.
        self.save_hyperparameters()

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """A loader over ``dataset``; shuffled ones (training) can continue an interrupted epoch exactly."""
        workers = self.num_workers > 0
        shuffled = {"sampler": EpochSampler(dataset)} if shuffle else {"shuffle": False}
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size,
            **shuffled,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and workers,
        )

    def predict_dataset(self) -> Dataset:
        """The images ``predict`` sees: the ``predict_split`` split (default test), without augmentation."""
        dataset = getattr(self, f"{self.predict_split or 'test'}_dataset")
        return dataset.plain() if isinstance(dataset, TensorImages) else dataset

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_dataset(), shuffle=False)


class EpochSampler(RandomSampler):
    """Lightning's shuffling sampler that knows its epoch: Lightning calls ``set_epoch`` as on a DistributedSampler
    (which replaces it under DDP and knows its epoch as well)."""

    epoch: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class ResumableLoader(DataLoader):
    """A training loader that continues an interrupted epoch where its checkpoint left it, bit for bit.

    Lightning stores ``state_dict()`` in every checkpoint and hands it back before the first epoch of a resumed run
    (its protocol for stateful loaders). Two things make the continued epoch equal to an uninterrupted one:

    - the same batches: the epoch's batches come again in the same order (the permutation and the worker processes'
      generators start from the state the epoch was seeded with) and those already trained are loaded and dropped.
      Loading rather than skipping indices keeps worker processes' augmentation in step.
    - the same random numbers: before each batch is fetched, this process's generators (Python, NumPy, torch) are
      reseeded from one number drawn when the epoch's iteration starts and the batch's position. A batch's
      augmentation (when loaded in this process) and its training step (dropout, mixup) then draw the same numbers
      however the process got there, through validation, a restart or neither.
    """

    _resume: dict[str, Any] | None = None
    _epoch: int | None = None
    _served = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = dict(state)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # Drawn here, where Lightning creates the epoch's iterator right after the epoch's reseed.
        base = int(torch.randint(2**62, ()).item())
        return self._batches(super().__iter__(), base)

    def _batches(self, batches: Iterator[Any], base: int) -> Iterator[Any]:
        # Runs at the first batch, after Lightning has told the sampler its epoch: an end-of-epoch checkpoint names
        # the finished epoch, so the next one starts at its beginning.
        self._epoch = getattr(self.sampler, "epoch", None)
        resume, self._resume = self._resume, None
        same_epoch = resume is not None and self._epoch is not None and resume.get("epoch") == self._epoch
        skip = int(resume.get("batches", 0)) if same_epoch else 0
        self._served = 0
        while True:
            _reseed(base, self._served)
            try:
                batch = next(batches)
            except StopIteration:
                return
            self._served += 1
            if self._served > skip:
                yield batch


def _reseed(base: int, index: int) -> None:
    seed = int(np.random.SeedSequence([base, index]).generate_state(1, np.uint64)[0])
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        # On the images' device, so images held on a GPU are normalised there.
        self.mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self.pad = pad
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def plain(self) -> TensorImages:
        """The same images and labels without augmentation: what evaluation and prediction see."""
        if not (self.pad or self.flip):
            return self
        return TensorImages(self.images, self.labels, self.mean.flatten().tolist(), self.std.flatten().tolist())

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


def describe_data(data: Any) -> str:
    """One line about a set-up data module: its classes, image shape, images per split and batch size."""
    parts = []
    if getattr(data, "num_classes", None):
        parts.append(f"{data.num_classes} classes")
    size = getattr(data, "image_size", None)
    if size:
        parts.append(f"{getattr(data, 'in_channels', 3)}x{size}x{size} images")
    counts = [f"{len(d):,} {split}" for split in SPLITS if (d := getattr(data, f"{split}_dataset", None)) is not None]
    if counts:
        parts.append(", ".join(counts))
    if getattr(data, "batch_size", None):
        parts.append(f"batch {data.batch_size}")
    return f"{type(data).__name__}: " + "; ".join(parts)
