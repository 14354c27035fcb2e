"""Load torchvision state dicts into our models where the two configurations coincide."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from lightning_depth.models.densenet import DenseNet
from lightning_depth.models.layers import LRN
from lightning_depth.models.resnet import ResNet
from lightning_depth.models.vgg import VGG

TORCHVISION_RESNETS = (18, 34, 50, 101, 152)
TORCHVISION_DENSENETS = {(6, 12, 24, 16): 121, (6, 12, 32, 32): 169, (6, 12, 48, 32): 201}


def load_torchvision_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Copy a torchvision ``state_dict`` into ``model`` and return it; ValueError if they do not coincide.

    Coinciding configurations: VGG A/B/D/E with or without BatchNorm (vgg11/13/16/19[_bn]); ResNet 18-152 on the
    ImageNet stem, post-activation, residual, shortcut "B" and (for bottlenecks) ``stride_in_3x3=True``;
    DenseNet-121/169/201 on the ImageNet stem with growth rate 32, bottlenecks and compression 0.5.
    """
    if isinstance(model, ResNet):
        reason = _resnet_mismatch(model)
    elif isinstance(model, DenseNet):
        reason = _densenet_mismatch(model)
        state_dict = _rename_legacy_densenet_keys(state_dict)
    elif isinstance(model, VGG):
        reason = _vgg_mismatch(model)
    else:
        raise ValueError(
            f"{type(model).__name__} has no torchvision counterpart with the same configuration; "
            "supported: VGG, ResNet, DenseNet"
        )
    if reason:
        raise ValueError(reason)
    _check_keys_and_shapes(model, state_dict)
    model.load_state_dict(state_dict, strict=True)
    return model


def _resnet_mismatch(model: ResNet) -> str | None:
    name = f"ResNet-{model.depth}"
    tv = f"torchvision's resnet{model.depth}"
    if model.depth not in TORCHVISION_RESNETS:
        depths = ", ".join(map(str, TORCHVISION_RESNETS))
        return f"{name} has no torchvision counterpart; torchvision has depths {depths}"
    if model.stem != "imagenet":
        return f"{name} with stem={model.stem!r} does not coincide with {tv}; build it with stem='imagenet'"
    if not model.residual:
        return f"{name} with residual=False (plain) does not coincide with {tv}; build it with residual=True"
    if model.preact:
        return f"{name} with preact=True does not coincide with {tv} (post-activation); build it with preact=False"
    if model.shortcut != "B":
        return (
            f"{name} with shortcut={model.shortcut!r} does not coincide with {tv} (projections only where the shape "
            "changes); build it with shortcut='B'"
        )
    if model.block == "bottleneck" and not model.stride_in_3x3:
        return (
            f"{name} with stride_in_3x3=False does not coincide with {tv} (stride in the 3x3); "
            "build it with stride_in_3x3=True"
        )
    return None


def _densenet_mismatch(model: DenseNet) -> str | None:
    depth = TORCHVISION_DENSENETS.get(model.block_config)
    if depth is None:
        return (
            f"DenseNet with block_config={model.block_config} has no torchvision counterpart; torchvision has "
            + ", ".join(f"densenet{d} {c}" for c, d in TORCHVISION_DENSENETS.items())
        )
    tv = f"torchvision's densenet{depth}"
    for arg, value, expected in (
        ("stem", model.stem, "imagenet"),
        ("growth_rate", model.growth_rate, 32),
        ("bottleneck", model.bottleneck, True),
        ("compression", model.compression, 0.5),
    ):
        if value != expected:
            return (
                f"DenseNet-{depth} with {arg}={value!r} does not coincide with {tv}; build it with {arg}={expected!r}"
            )
    return None


def _vgg_mismatch(model: nn.Module) -> str | None:
    # The paper's A-LRN and C have no torchvision counterpart; A/B/D/E (with or without BN) map one to one.
    if any(isinstance(m, LRN) for m in model.modules()):
        return "VGG config 'A-LRN' has no torchvision counterpart (torchvision has A, B, D, E); build config='A'"
    if any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules()):
        return "VGG config 'C' (with 1×1 convolutions) has no torchvision counterpart; torchvision has A, B, D, E"
    return None


# torchvision's published DenseNet checkpoints predate its current module names ("norm.1" for "norm1").
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _rename_legacy_densenet_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _check_keys_and_shapes(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    wrong_shape = [
        f"{k}: model {tuple(v.shape)}, state dict {tuple(state_dict[k].shape)}"
        for k, v in ours.items()
        if k in state_dict and v.shape != state_dict[k].shape
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{label}: {'; '.join(items[:5])}{more}")
    if problems:
        raise ValueError(
            f"the state dict does not fit this {type(model).__name__} (is it the torchvision model of the same depth, "
            f"num_classes and in_channels?): " + " | ".join(problems)
        )
