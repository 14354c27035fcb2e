"""Paper-faithful AlexNet, VGG, GoogLeNet, ResNet and DenseNet with every documented design choice as a toggle."""

from lightning_depth.models.alexnet import AlexNet
from lightning_depth.models.densenet import DenseNet
from lightning_depth.models.googlenet import GoogLeNet
from lightning_depth.models.layers import ClassifierOutput, logits_and_aux
from lightning_depth.models.registry import FAMILIES, PRESETS, build_model, list_models
from lightning_depth.models.resnet import ResNet
from lightning_depth.models.torchvision_weights import load_torchvision_weights
from lightning_depth.models.vgg import VGG

__all__ = [
    "AlexNet",
    "VGG",
    "GoogLeNet",
    "ResNet",
    "DenseNet",
    "ClassifierOutput",
    "logits_and_aux",
    "FAMILIES",
    "PRESETS",
    "build_model",
    "list_models",
    "load_torchvision_weights",
]
