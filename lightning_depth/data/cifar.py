"""CIFAR-10 and CIFAR-100 with the augmentation of the ResNet and DenseNet papers, held in memory as uint8 tensors."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

from lightning_depth.data.base import LoaderDataModule, TensorImages, stratified_split
from lightning_depth.errors import UsageError

TRAIN_IMAGES = 50_000


class CIFARDataModule(LoaderDataModule):
    """Reads the python-pickle release of CIFAR (the files torchvision downloads) and serves augmented batches."""

    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    meta_file: str  # the release's class names: meta_file[names_key]
    names_key: str
    image_size = 32
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_dataset: type

    def __init__(
        self,
        root: str,
        download: bool,
        val_split: int,
        augment: bool,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        persistent_workers: bool,
        predict_split: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, predict_split)
        if val_split != 0 and not self.num_classes <= val_split < TRAIN_IMAGES:
            raise ValueError(
                f"val_split={val_split} must be 0 (validate on the test set) or between {self.num_classes} "
                f"(one image per class) and {TRAIN_IMAGES - 1}"
            )
        self.root = Path(root)
        self.download = download
        self.val_split = val_split
        self.augment = augment
        self.train_dataset: TensorImages | None = None
        self.val_dataset: TensorImages | None = None
        self.test_dataset: TensorImages | None = None

    def prepare_data(self) -> None:
        if self.download:
            try:
                for train in (True, False):
                    self.torchvision_dataset(str(self.root), train=train, download=True)
            except Exception as err:  # network, disk or checksum failures all mean the same thing to the user
                raise UsageError(
                    f"could not download {self.title} to {self.root} ({type(err).__name__}: {err}); "
                    f"place the extracted {self.folder}/ there by hand and pass --data.init_args.download false"
                ) from err
        self._check_present()

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        self._check_present()
        images, labels = self._read(self.train_files)
        test_images, test_labels = self._read(self.test_files)
        self.class_names = self._read_names()
        # He et al. pad 4 pixels, crop 32×32 and flip; they subtract a per-pixel mean where we normalise per
        # channel, the now-standard equivalent that does not depend on the crop position.
        train_stats = dict(mean=self.mean, std=self.std, pad=4 if self.augment else 0, flip=self.augment)
        eval_stats = dict(mean=self.mean, std=self.std)
        self.test_dataset = TensorImages(test_images, test_labels, **eval_stats)
        if self.val_split == 0:
            self.train_dataset = TensorImages(images, labels, **train_stats)
            self.val_dataset = self.test_dataset
            return
        if self.val_split > len(labels) - self.num_classes:
            raise UsageError(
                f"val_split={self.val_split} leaves too few of the {len(labels)} training images in {self.root}; "
                f"pass --data.init_args.val_split between {self.num_classes} and {len(labels) - self.num_classes}, or 0"
            )
        train, val = stratified_split(labels.numpy(), self.val_split)
        self.train_dataset = TensorImages(images[train], labels[train], **train_stats)
        self.val_dataset = TensorImages(images[val], labels[val], **eval_stats)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)

    def _check_present(self) -> None:
        for name in self.train_files + self.test_files:
            path = self.root / self.folder / name
            if not path.is_file():
                raise UsageError(
                    f"{self.title} not found under {self.root} (no {path}) and download is off; "
                    "pass --data.init_args.download true or --data.init_args.root PATH, "
                    "or use DigitsDataModule, which ships with the package"
                )

    def _read_names(self) -> list[str] | None:
        """The class names of the release's meta file; None when it is missing or holds no names (predictions then
        name classes by index only)."""
        try:
            with (self.root / self.folder / self.meta_file).open("rb") as f:
                meta = pickle.load(f, encoding="bytes")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[self.names_key.encode()]]
        except Exception:  # noqa: BLE001 - the names are a convenience; training and metrics never need them
            return None
        return names if len(names) == self.num_classes else None

    def _read(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate pickled batches into (N, 3, 32, 32) uint8 images and (N,) int64 labels."""
        images, labels = [], []
        for name in names:
            path = self.root / self.folder / name
            x, y = _read_batch(path, self.label_key)
            if len(y) and not 0 <= y.min() <= y.max() < self.num_classes:
                raise UsageError(f"{path} has labels outside 0..{self.num_classes - 1}; is root a {self.title} folder?")
            images.append(x)
            labels.append(y)
        return torch.from_numpy(np.concatenate(images)), torch.tensor(np.concatenate(labels), dtype=torch.long)


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle: b"data" is N×3072 uint8 (1024 red, 1024 green, 1024 blue, row-major); labels a list."""
    redownload = f"delete {path.parent} and pass --data.init_args.download true"
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the encoding the CIFAR site prescribes for these files
    except Exception as err:  # a truncated or foreign file can fail inside pickle in many ways
        raise UsageError(f"{path} is unreadable ({type(err).__name__}: {err}); {redownload}") from err
    if not isinstance(batch, dict):
        raise UsageError(f"{path} is not a CIFAR batch (a pickled dict); {redownload}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,) or labels is None:
        raise UsageError(f"{path} lacks N×3072 uint8 'data' or '{label_key}'; {redownload}")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(data):
        raise UsageError(f"{path} has {len(data)} images but {len(labels)} labels; {redownload}")
    return data.reshape(-1, 3, 32, 32), labels


class CIFAR10DataModule(CIFARDataModule):
    """CIFAR-10: 50,000 training and 10,000 test 32×32 colour images in 10 classes.

    Args:
        root: folder holding (or receiving) the extracted `cifar-10-batches-py/`.
        download: fetch the archive with torchvision when it is missing (needs network access).
        val_split: training images held out for validation with a fixed seed, stratified by class (He et al.
            2015 §4.2 chose their schedule on a 45k/5k split). 0 trains on all 50k and validates on the test set,
            as most papers' curves do; model selection on those numbers is then optimistic.
        augment: the papers' 4-pixel zero padding, random 32×32 crop and horizontal flip (He et al. 2015 §4.2;
            DenseNet's "C10+"). Off gives DenseNet's "C10" setting (Huang et al. 2017 Table 2).
        batch_size: images per batch (per device under DDP); 128 as in He et al.
        num_workers: loader worker processes; 0 loads in the main process.
        pin_memory: page-locked batches for faster host-to-GPU copies; ignored without CUDA.
        persistent_workers: keep workers alive between epochs; ignored when num_workers is 0.
        predict_split: the split ``predict`` runs on: train (without augmentation), val or test; None is test.
    """

    title = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    meta_file, names_key = "batches.meta", "label_names"
    num_classes = 10
    # Per-pixel statistics of the 50k training images (the widespread 0.2023, 0.1994, 0.2010 are averages of
    # per-image standard deviations, not the dataset's).
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    torchvision_dataset = torchvision.datasets.CIFAR10

    def __init__(
        self,
        root: str = "data/cifar10",
        download: bool = False,
        val_split: int = 5000,
        augment: bool = True,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        predict_split: Literal["train", "val", "test"] | None = None,
    ) -> None:
        super().__init__(root, download, val_split, augment, batch_size, num_workers, pin_memory, persistent_workers,
                         predict_split)


class CIFAR100DataModule(CIFARDataModule):
    """CIFAR-100: 50,000 training and 10,000 test 32×32 colour images in 100 fine classes.

    Args:
        root: folder holding (or receiving) the extracted `cifar-100-python/`.
        download: fetch the archive with torchvision when it is missing (needs network access).
        val_split: training images held out for validation with a fixed seed, stratified by class. 0 trains on
            all 50k and validates on the test set; model selection on those numbers is then optimistic.
        augment: 4-pixel zero padding, random 32×32 crop and horizontal flip, as for CIFAR-10 ("C100+" in
            Huang et al. 2017 Table 2; off gives "C100").
        batch_size: images per batch (per device under DDP).
        num_workers: loader worker processes; 0 loads in the main process.
        pin_memory: page-locked batches for faster host-to-GPU copies; ignored without CUDA.
        persistent_workers: keep workers alive between epochs; ignored when num_workers is 0.
        predict_split: the split ``predict`` runs on: train (without augmentation), val or test; None is test.
    """

    title = "CIFAR-100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    meta_file, names_key = "meta", "fine_label_names"
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    torchvision_dataset = torchvision.datasets.CIFAR100

    def __init__(
        self,
        root: str = "data/cifar100",
        download: bool = False,
        val_split: int = 5000,
        augment: bool = True,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        predict_split: Literal["train", "val", "test"] | None = None,
    ) -> None:
        super().__init__(root, download, val_split, augment, batch_size, num_workers, pin_memory, persistent_workers,
                         predict_split)
