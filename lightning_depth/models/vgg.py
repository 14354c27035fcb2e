"""VGG (Simonyan & Zisserman 2015): the six configurations of Table 1, optionally with BatchNorm."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lightning_depth.models.layers import LRN, check_choice, check_positive_int, check_probability, init_xavier_

# Table 1, one entry per layer: an int is a 3×3 convolution (stride 1, padding 1) with that many channels,
# ("1x1", c) a 1×1 convolution (configuration C), "LRN" AlexNet's local response normalisation, "M" a 2×2/2 max pool.
Layer = int | str | tuple[str, int]
CONFIGS: dict[str, list[Layer]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, ("1x1", 256), "M",
          512, 512, ("1x1", 512), "M", 512, 512, ("1x1", 512), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
HIDDEN = 4096  # width of the first two fully connected layers (Table 1: FC-4096, FC-4096)


def make_features(config: list[Layer], in_channels: int, batch_norm: bool) -> nn.Sequential:
    """The convolutional part of a Table 1 column, laid out like torchvision's ``vgg.features``."""
    layers: list[nn.Module] = []
    channels = in_channels
    for layer in config:
        if layer == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        elif layer == "LRN":
            # §2.3 / Table 1: A-LRN uses the normalisation of Krizhevsky et al. (2012), after the first ReLU.
            layers.append(LRN(size=5, alpha=1e-4, beta=0.75, k=2.0))
        else:
            kernel, out = (3, layer) if isinstance(layer, int) else (1, layer[1])
            layers.append(nn.Conv2d(channels, out, kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG: stacks of 3×3 convolutions, five max pools and three fully connected layers (Simonyan & Zisserman 2015).

    Module names and indices (``features.N``, ``avgpool``, ``classifier.N``) match torchvision's VGG for
    configurations A, B, D and E, with and without BatchNorm, so their state dicts map one to one.

    Initialisation: §3.1 draws weights from N(0, 10⁻²) for configuration A and initialises the deeper nets from A's
    trained layers; it then notes that Glorot & Bengio's (2010) initialisation trains them without that
    pre-training. We use Glorot (uniform) for every configuration, biases zero.

    Args:
        num_classes: number of output classes (1000 for ImageNet).
        in_channels: number of input image channels.
        config: a column of Table 1 (§2.3): "A" (11 weight layers), "A-LRN" (A with LRN), "B" (13),
            "C" (16, with 1×1 convolutions), "D" (16), "E" (19).
        batch_norm: BatchNorm after every convolution, as in torchvision's ``vgg*_bn`` (not in the paper).
        dropout: dropout probability after the first two fully connected layers (§3.1: 0.5).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        config: Literal["A", "A-LRN", "B", "C", "D", "E"] = "D",
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_choice("config", config, CONFIGS)
        check_choice("batch_norm", batch_norm, (True, False))
        check_probability("dropout", dropout)

        self.features = make_features(CONFIGS[config], in_channels, batch_norm)
        # Identity at the paper's 224×224 input (five pools give 7×7); smaller inputs (e.g. 32×32 → 1×1) are
        # replicated up to 7×7 so the classifier keeps Table 1's shape, as torchvision does.
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN, num_classes),
        )
        init_xavier_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# Table 2 names the networks by configuration; the usual names follow the weight-layer count.
# The _bn variants are torchvision's, not the paper's.
PRESETS: dict[str, dict[str, Any]] = {
    "vgg11": {"config": "A"},
    "vgg11_lrn": {"config": "A-LRN"},
    "vgg13": {"config": "B"},
    "vgg16_conv1": {"config": "C"},
    "vgg16": {"config": "D"},
    "vgg19": {"config": "E"},
    "vgg11_bn": {"config": "A", "batch_norm": True},
    "vgg13_bn": {"config": "B", "batch_norm": True},
    "vgg16_bn": {"config": "D", "batch_norm": True},
    "vgg19_bn": {"config": "E", "batch_norm": True},
}
