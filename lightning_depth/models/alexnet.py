"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) in its two-GPU layout, with the paper's ablations as toggles."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lightning_depth.models.layers import LRN, check_choice, check_positive_int, check_probability, init_normal_

NORMS = ("lrn", "batch", "none")
GROUPS = (1, 2)
ACTIVATIONS = ("relu", "tanh")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "lrn":
        return LRN(size=5, alpha=1e-4, beta=0.75, k=2.0)  # §3.3: n = 5, α = 1e-4, β = 0.75, k = 2
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def _activation(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.Tanh()


def _pool(overlapping: bool) -> nn.MaxPool2d:
    # §3.4: 3×3 windows every 2 pixels overlap; 2×2/2 is the traditional scheme. Both give 55 → 27 → 13 → 6.
    return nn.MaxPool2d(3, stride=2) if overlapping else nn.MaxPool2d(2, stride=2)


# (out channels, kernel, stride, padding, grouped in the two-GPU layout, followed by the norm, followed by a pool)
# One row per convolution of §3.5 / Figure 2. "grouped" layers see only their own GPU's half of the previous maps;
# conv1 is not grouped because both towers see the whole image, conv3 because it reads both towers.
FEATURES: list[tuple[int, int, int, int, bool, bool, bool]] = [
    (96, 11, 4, 0, False, True, True),
    (256, 5, 1, 2, True, True, True),
    (384, 3, 1, 1, False, False, False),
    (384, 3, 1, 1, True, False, False),
    (256, 3, 1, 1, True, False, True),
]
HIDDEN = 4096  # width of the first two fully connected layers


class AlexNet(nn.Module):
    """AlexNet: five convolutions and three fully connected layers (Krizhevsky et al. 2012, Figure 2).

    The paper says the input is 224×224, but an 11×11 convolution with stride 4 and no padding only yields the
    55×55 maps of Figure 2 from 227×227 ((227 − 11) / 4 + 1 = 55); use 227 crops for the paper's geometry.

    Args:
        num_classes: number of output classes (1000 for ImageNet).
        in_channels: number of input image channels.
        norm: what follows the ReLUs of conv1 and conv2: "lrn" is the paper's local response normalisation (§3.3),
            "batch" BatchNorm (not in the paper), "none" nothing (the §3.3 ablation: +1.4/1.2 points top-1/top-5).
        groups: 2 is the two-GPU layout of §3.2 (conv2, conv4, conv5 see only their own tower); 1 connects every
            layer to all maps of the previous one. Note: the paper's one-GPU baseline in §3.2 also halves the kernels
            of conv1–conv4, which groups=1 does not.
        activation: "relu" (§3.1) or "tanh", the saturating nonlinearity §3.1 compares against.
        overlapping_pool: 3×3 max pools with stride 2 (§3.4) instead of 2×2 with stride 2.
        dropout: dropout probability on the outputs of the first two fully connected layers (§4.2).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        norm: Literal["lrn", "batch", "none"] = "lrn",
        groups: Literal[1, 2] = 2,
        activation: Literal["relu", "tanh"] = "relu",
        overlapping_pool: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_choice("norm", norm, NORMS)
        check_choice("groups", groups, GROUPS)
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("overlapping_pool", overlapping_pool, (True, False))
        check_probability("dropout", dropout)

        layers: list[nn.Module] = []
        channels = in_channels
        for out, kernel, stride, padding, grouped, normed, pooled in FEATURES:
            layers += [
                nn.Conv2d(channels, out, kernel, stride, padding, groups=groups if grouped else 1),
                _activation(activation),
            ]
            if normed:
                layers.append(_norm(norm, out))
            if pooled:
                layers.append(_pool(overlapping_pool))
            channels = out
        self.features = nn.Sequential(*layers)
        # Identity at the paper's 227×227 input (conv5 already gives 6×6); lets small inputs (e.g. 67×67, the
        # smallest the overlapping pools accept) reach the same 9216-wide classifier.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 6 * 6, HIDDEN),
            _activation(activation),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN, HIDDEN),
            _activation(activation),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN, num_classes),
        )
        self._init_paper()

    def _init_paper(self) -> None:
        # §5: weights from N(0, 0.01²); biases 1 in conv2, conv4, conv5 and the hidden fully connected layers
        # ("accelerates the early stages of learning by providing the ReLUs with positive inputs"), 0 elsewhere.
        init_normal_(self, std=0.01, bias=0.0)
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        for m in (convs[1], convs[3], convs[4], linears[0], linears[1]):
            nn.init.ones_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# The paper trains and reports one network; its ablations (§3) are toggles of this preset.
PRESETS: dict[str, dict[str, Any]] = {
    "alexnet": {},
}
