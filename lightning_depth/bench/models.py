"""models: forward and backward of our networks against torchvision's where the configurations coincide; loading
torchvision's state dict into ours (strict) first proves the architectures are the same."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightning_depth.bench.timing import Config, Row, interleave, paired, timed
from lightning_depth.models import build_model

GOAL = 1.02
# name in our registry -> (toggles that make it torchvision's configuration, torchvision builder, display name)
ZOO = {
    "resnet50": ({"stride_in_3x3": True, "shortcut": "B"}, "resnet50", "ResNet-50"),
    "vgg16": ({}, "vgg16", "VGG-16"),
    "densenet121": ({}, "densenet121", "DenseNet-121"),
}


def measure(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    arms, shapes = {}, {}
    for name, (toggles, tv_name, _) in ZOO.items():
        ours, theirs = build_model(name, **toggles), getattr(torchvision.models, tv_name)()
        ours.load_state_dict(theirs.state_dict())  # strict: the same architecture, and the same weights
        batch = cfg.zoo_batch[name]
        x, y = torch.randn(batch, 3, cfg.zoo_size, cfg.zoo_size), torch.randint(0, 1000, (batch,))
        shapes[name] = batch
        for side, model in (("ours", ours), ("torchvision", theirs)):
            def run(model: nn.Module = model, x: torch.Tensor = x, y: torch.Tensor = y) -> float:
                model.zero_grad(set_to_none=True)
                return timed(lambda: F.cross_entropy(model(x), y).backward())
            run()  # warm-up
            arms[f"{side} {name}"] = run
    # One round runs every network, so each gets the same number of pairs.
    t = interleave(arms, deadline, cfg.rounds)
    return [paired("models", f"{title} ours / torchvision, fwd+bwd b{shapes[name]} {cfg.zoo_size}px",
                   t[f"ours {name}"], t[f"torchvision {name}"], goal=GOAL)
            for name, (_, _, title) in ZOO.items()]
