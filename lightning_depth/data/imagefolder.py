"""ImageNet-style class folders (ImageNet, Imagenette) with the papers' scale, flip and lighting augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.transforms import v2

from lightning_depth.data.base import LoaderDataModule
from lightning_depth.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Principal components of ImageNet RGB pixels (scaled to 0..1), as released with fb.resnet.torch; the AlexNet paper
# (§4.1) describes the method but prints no numbers. Columns of the eigenvector matrix are the components.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Lighting(nn.Module):
    """AlexNet's PCA colour noise: add Σᵢ αᵢ λᵢ pᵢ to every pixel, αᵢ ~ N(0, σ) drawn once per image (§4.1).

    Args:
        std: σ of the per-component factors αᵢ; 0.1 in the paper.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std
        self.register_buffer("eigval", torch.tensor(IMAGENET_EIGVAL))
        self.register_buffer("eigvec", torch.tensor(IMAGENET_EIGVEC))

    def forward(self, image: Tensor) -> Tensor:
        alpha = torch.randn(3) * self.std
        shift = self.eigvec @ (alpha * self.eigval)
        return image + shift.view(3, 1, 1)


class TenCrop(nn.Module):
    """Four corner crops, the centre crop and the same five of the mirrored image, as one (10, C, H, W) tensor.

    AlexNet's test-time averaging over ten 224×224 patches (Krizhevsky et al. 2012 §4.1).
    """

    def __init__(self, size: int, finish: v2.Compose) -> None:
        super().__init__()
        self.size = size
        self.finish = finish

    def forward(self, image: Image.Image) -> Tensor:
        return torch.stack([self.finish(crop) for crop in v2.functional.ten_crop(image, [self.size, self.size])])


def _read_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except OSError as err:  # PIL's UnidentifiedImageError and truncated files are both OSErrors
        raise UsageError(f"cannot read image {path} ({err}); remove or replace the file") from err


class ImageFiles(Dataset):
    """Every image file under a folder (sub-folders included), in path order, unlabelled: what ``predict`` reads
    from a folder of new images, which needs no class sub-folders.

    Args:
        root: the folder.
        transform: turns each RGB image into the network's input.
    """

    def __init__(self, root: str | Path, transform: v2.Compose) -> None:
        folder = Path(root)
        if not folder.is_dir():
            raise UsageError(f"no folder {folder} to predict; pass --data.init_args.predict_root PATH to a folder of "
                             "images")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not files:
            raise UsageError(f"{folder} holds no image files ({' '.join(IMG_EXTENSIONS)})")
        self.samples: list[tuple[str, int | None]] = [(str(p), None) for p in files]  # ImageFolder's form, no label
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tensor:
        return self.transform(_read_rgb(self.samples[index][0]))


class ImageFolderDataModule(LoaderDataModule):
    """Images in `root/train/<class>/*` and `root/val/<class>/*` (ImageNet, Imagenette), one class per folder.

    Training uses random-resized crops (Szegedy et al. 2015 §6: 8%–100% of the area, aspect ratio 3/4–4/3), the
    scale augmentation that torchvision's reference recipes use for every family here. It departs from AlexNet
    (random 224 crops of a 256×256 image), VGG (shorter side jittered in [256, 512]) and ResNet (shorter side in
    [256, 480], §3.4); it is at least as strong and keeps one recipe across the families. Evaluation resizes the
    shorter side to image_size·256/224 and takes the centre crop. ImageNet's test labels are not public, so the
    test split is `root/val` too.

    Args:
        root: folder with `train/` and `val/`, each holding one sub-folder per class.
        image_size: training and evaluation crop side (224; 227 for the paper's AlexNet arithmetic).
        lighting: σ of AlexNet's PCA lighting noise (Krizhevsky et al. 2012 §4.1 use 0.1); 0 disables it.
        ten_crop: evaluate the test split on 10 crops (Krizhevsky et al. 2012 §4.1): each test sample becomes a
            (10, C, H, W) tensor, so batches are 5-D and the model module averages the logits over the crop
            dimension. Validation stays single-crop.
        batch_size: images per batch (per device under DDP); 256 as in VGG, ResNet and DenseNet.
        num_workers: loader worker processes; JPEG decoding needs several per GPU.
        pin_memory: page-locked batches for faster host-to-GPU copies; ignored without CUDA.
        persistent_workers: keep workers alive between epochs; ignored when num_workers is 0.
        predict_split: the split ``predict`` runs on: train, val or test (both `root/val`); None is test. Always one
            centre crop.
        predict_root: a folder of images to predict instead of a split, in any layout (no class sub-folders).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        lighting: float = 0.0,
        ten_crop: bool = False,
        batch_size: int = 256,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        predict_split: Literal["train", "val", "test"] | None = None,
        predict_root: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, persistent_workers, predict_split)
        if image_size < 8:
            raise ValueError(f"image_size={image_size} must be at least 8")
        if lighting < 0:
            raise ValueError(f"lighting={lighting} is a standard deviation and must be 0 (off) or positive")
        self.root = Path(root)
        self.image_size = image_size
        self.lighting = lighting
        self.ten_crop = ten_crop
        self.predict_root = predict_root
        self.classes = self._classes("train")
        self.class_names = self.classes
        self.num_classes = len(self.classes)
        self.train_dataset: ImageFolder | None = None
        self.val_dataset: ImageFolder | None = None
        self.test_dataset: ImageFolder | None = None
        self.predict_set: Dataset | None = None

    def _classes(self, split: str) -> list[str]:
        folder = self.root / split
        try:
            classes, _ = find_classes(str(folder))
        except (FileNotFoundError, NotADirectoryError) as err:
            raise UsageError(
                f"no class folders under {folder}; pass --data.init_args.root PATH to a folder holding "
                "train/<class>/ and val/<class>/, or use DigitsDataModule, which ships with the package"
            ) from err
        return classes

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":  # one folder is read, not the whole dataset
            self.predict_dataset()
            return
        if self.train_dataset is not None:
            return
        val_classes = self._classes("val")
        if val_classes != self.classes:
            raise UsageError(
                f"{self.root / 'val'} has {len(val_classes)} class folders that differ from the "
                f"{len(self.classes)} in {self.root / 'train'}; both must hold the same class names"
            )
        train = v2.Compose(
            [
                v2.RandomResizedCrop(self.image_size, antialias=True),
                v2.RandomHorizontalFlip(),
                *self._to_tensor(),
                *([Lighting(self.lighting)] if self.lighting > 0 else []),
                *self._normalize(),
            ]
        )
        finish = v2.Compose([*self._to_tensor(), *self._normalize()])
        ten = v2.Compose([self._resize(), TenCrop(self.image_size, finish)])
        self.train_dataset = self._folder("train", train)
        self.val_dataset = self._folder("val", self._single_crop())
        self.test_dataset = self._folder("val", ten if self.ten_crop else self._single_crop())

    @staticmethod
    def _to_tensor() -> list[nn.Module]:
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]

    @staticmethod
    def _normalize() -> list[nn.Module]:
        # Plain tensors out, so batches are torch.Tensor rather than torchvision's Image subclass.
        return [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.ToPureTensor()]

    def _resize(self) -> v2.Resize:
        return v2.Resize(round(self.image_size * 256 / 224), antialias=True)

    def _single_crop(self) -> v2.Compose:
        """Evaluation's view: the shorter side resized to image_size·256/224, then the centre crop."""
        return v2.Compose([self._resize(), v2.CenterCrop(self.image_size), *self._to_tensor(), *self._normalize()])

    def predict_dataset(self) -> Dataset:
        """``predict_root``'s images, or the ``predict_split`` split (default test), each as one centre crop."""
        if self.predict_set is None:
            if self.predict_root is not None:
                self.predict_set = ImageFiles(self.predict_root, self._single_crop())
            else:
                split = "train" if self.predict_split == "train" else "val"
                self.predict_set = self._folder(split, self._single_crop())
        return self.predict_set

    def _folder(self, split: str, transform: v2.Compose) -> ImageFolder:
        try:
            return ImageFolder(str(self.root / split), transform=transform, loader=_read_rgb)
        except FileNotFoundError as err:  # class folders without a single image file
            raise UsageError(f"{self.root / split}: {err}; add images or remove the empty class folders") from err

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)
