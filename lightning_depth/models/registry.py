"""One factory for every family and every configuration named in the papers' tables."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from lightning_depth.models import alexnet, densenet, googlenet, resnet, vgg

# family name -> (class, presets). Each family module owns its presets next to its depth tables.
_FAMILY_TABLE: tuple[tuple[str, type[nn.Module], dict[str, dict[str, Any]]], ...] = (
    ("alexnet", alexnet.AlexNet, alexnet.PRESETS),
    ("vgg", vgg.VGG, vgg.PRESETS),
    ("googlenet", googlenet.GoogLeNet, googlenet.PRESETS),
    ("resnet", resnet.ResNet, resnet.PRESETS),
    ("densenet", densenet.DenseNet, densenet.PRESETS),
)

FAMILIES: dict[str, type[nn.Module]] = {family: cls for family, cls, _ in _FAMILY_TABLE}

# preset name -> (family, toggles)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    name: (family, dict(toggles)) for family, _, presets in _FAMILY_TABLE for name, toggles in presets.items()
}


def list_models() -> list[str]:
    """Every family name and every preset, sorted."""
    return sorted(set(FAMILIES) | set(PRESETS))


def resolve(name: str, **toggles: Any) -> tuple[type[nn.Module], dict[str, Any]]:
    """The family class and the full toggle dict for ``name`` (toggles override a preset)."""
    if name in FAMILIES:
        cls, base = FAMILIES[name], {}
    elif name in PRESETS:
        family, base = PRESETS[name]
        cls = FAMILIES[family]
    else:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(toggles) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown toggle(s) {', '.join(unknown)} for {cls.__name__}; valid toggles: {', '.join(allowed)}"
        )
    return cls, {**base, **toggles}


def build_model(name: str, **toggles: Any) -> nn.Module:
    """Build a family (``"resnet"``) or a preset (``"resnet50"``); toggles passed here override the preset's."""
    cls, kwargs = resolve(name, **toggles)
    return cls(**kwargs)
