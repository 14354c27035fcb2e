"""LightningDataModules: the bundled digits, CIFAR-10/100 and ImageNet-style folders."""

from lightning_depth.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_depth.data.digits import DigitsDataModule
from lightning_depth.data.gpu_cifar import GPUCIFAR10DataModule, GPUCIFAR100DataModule
from lightning_depth.data.imagefolder import ImageFolderDataModule

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule", "DigitsDataModule", "ImageFolderDataModule"]
__all__ += ["GPUCIFAR10DataModule", "GPUCIFAR100DataModule"]
