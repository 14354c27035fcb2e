"""lightning_depth: the revolution of depth (AlexNet → DenseNet) as paper-faithful, ablatable Lightning experiments.

    from lightning_depth import ImageClassifier, build_model, list_models

    net = build_model("resnet20", preact=True)  # every name in list_models(), every toggle typed and checked
    model = ImageClassifier(net)                # the LightningModule the CLI trains
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "build_model", "list_models"]

# Imported on first use: `python -m lightning_depth status` and the other tools start without torch or Lightning.
_PUBLIC = {"ImageClassifier": "lightning_depth.module", "build_model": "lightning_depth.models.registry",
           "list_models": "lightning_depth.models.registry"}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lightning_depth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
