"""GoogLeNet (Szegedy et al. 2015): Table 1 with real 5×5 convolutions, auxiliary classifiers and the naive module."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lightning_depth.models.layers import (
    LRN,
    ClassifierOutput,
    check_choice,
    check_positive_int,
    check_probability,
    init_xavier_,
)

INCEPTIONS = ("reduced", "naive")


def conv_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, batch_norm: bool = False) -> nn.Module:
    """Convolution with "same" padding, optional BatchNorm, then ReLU (§5: every convolution is followed by one)."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=not batch_norm)
    norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    return nn.Sequential(conv, *norm, nn.ReLU(inplace=True))


class Row(NamedTuple):
    """One inception row of Table 1: the output width of each branch and of the reductions in front of them."""

    c1x1: int
    c3x3_reduce: int
    c3x3: int
    c5x5_reduce: int
    c5x5: int
    pool_proj: int


class Inception(nn.Module):
    """The inception module of Figure 2 (b): 1×1, 1×1 → 3×3, 1×1 → 5×5, 3×3 max pool → 1×1, concatenated.

    Args:
        in_channels: number of input channels.
        row: the branch widths, one row of Table 1.
        batch_norm: BatchNorm after every convolution (not in the paper).
    """

    def __init__(self, in_channels: int, row: Row, batch_norm: bool = False) -> None:
        super().__init__()
        self.branch1 = conv_relu(in_channels, row.c1x1, 1, batch_norm=batch_norm)
        self.branch2 = nn.Sequential(
            conv_relu(in_channels, row.c3x3_reduce, 1, batch_norm=batch_norm),
            conv_relu(row.c3x3_reduce, row.c3x3, 3, batch_norm=batch_norm),
        )
        # A real 5×5, as in Table 1 (torchvision's GoogLeNet has a 3×3 here).
        self.branch3 = nn.Sequential(
            conv_relu(in_channels, row.c5x5_reduce, 1, batch_norm=batch_norm),
            conv_relu(row.c5x5_reduce, row.c5x5, 5, batch_norm=batch_norm),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),
            conv_relu(in_channels, row.pool_proj, 1, batch_norm=batch_norm),
        )
        self.out_channels = row.c1x1 + row.c3x3 + row.c5x5 + row.pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class NaiveInception(nn.Module):
    """The naive inception module of Figure 2 (a): 1×1, 3×3, 5×5 and the 3×3 max-pooled input, concatenated.

    Without reductions the pooled input passes through unchanged, so the output is wider than the input
    (Table 1's 3a gives 64 + 128 + 32 + 192 = 416 channels instead of 256); the pool projection is unused.

    Args:
        in_channels: number of input channels.
        row: the branch widths, one row of Table 1 (#1×1, #3×3, #5×5 are used).
        batch_norm: BatchNorm after every convolution (not in the paper).
    """

    def __init__(self, in_channels: int, row: Row, batch_norm: bool = False) -> None:
        super().__init__()
        self.branch1 = conv_relu(in_channels, row.c1x1, 1, batch_norm=batch_norm)
        self.branch2 = conv_relu(in_channels, row.c3x3, 3, batch_norm=batch_norm)
        self.branch3 = conv_relu(in_channels, row.c5x5, 5, batch_norm=batch_norm)
        self.branch4 = nn.MaxPool2d(3, stride=1, padding=1)
        self.out_channels = row.c1x1 + row.c3x3 + row.c5x5 + in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class AuxClassifier(nn.Module):
    """Auxiliary classifier of §5: 5×5/3 average pool, 1×1 conv 128 + ReLU, FC 1024 + ReLU, 70% dropout, linear.

    Args:
        in_channels: number of input channels (512 after 4a, 528 after 4d).
        num_classes: number of output classes.
        batch_norm: BatchNorm after the convolution (not in the paper).
    """

    def __init__(self, in_channels: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv = conv_relu(in_channels, 128, 1, batch_norm=batch_norm)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # §5's pool turns the 14×14 maps of a 224 input into 4×4. Maps smaller than the 5×5 window (small inputs)
        # skip it, and the adaptive pool brings any other size to 4×4; at 224 it is the identity.
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, 5, stride=3)
        x = F.adaptive_avg_pool2d(x, (4, 4))
        x = torch.flatten(self.conv(x), 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


class GoogLeNet(nn.Module):
    """GoogLeNet: a 22-layer stack of inception modules with two auxiliary classifiers (Szegedy et al. 2015, Table 1).

    Output: a ``ClassifierOutput(logits, aux)`` in every mode. ``aux`` is ``(aux1_logits, aux2_logits)`` in training
    mode with ``aux_classifiers=True`` and empty otherwise: §5 adds the auxiliary losses with weight 0.3 during
    training and discards the heads at inference.

    Initialisation: the paper does not state one; we use Glorot & Bengio (2010) uniform weights, biases zero.

    Args:
        num_classes: number of output classes (1000 for ImageNet).
        in_channels: number of input image channels.
        aux_classifiers: the two auxiliary classifiers on the outputs of 4a and 4d (§5).
        inception: "reduced" is the module used in Table 1 (Figure 2 b, §4); "naive" drops the 1×1 reductions and
            pool projections (Figure 2 a), which the paper describes but does not train.
        lrn: the two local response normalisations of the stem (Table 1 / Figure 3). The paper gives no constants;
            we use AlexNet's (n = 5, α = 1e-4, β = 0.75, k = 2).
        batch_norm: BatchNorm after every convolution, as torchvision does (not in the paper).
        dropout: dropout probability before the final linear layer (Table 1: 40%).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        aux_classifiers: bool = True,
        inception: Literal["reduced", "naive"] = "reduced",
        lrn: bool = True,
        batch_norm: bool = False,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_choice("aux_classifiers", aux_classifiers, (True, False))
        check_choice("inception", inception, INCEPTIONS)
        check_choice("lrn", lrn, (True, False))
        check_choice("batch_norm", batch_norm, (True, False))
        check_probability("dropout", dropout)

        self._build_stem(in_channels, lrn, batch_norm)
        self._build_inceptions(NaiveInception if inception == "naive" else Inception, batch_norm)
        aux1_channels, aux2_channels = self.inception4a.out_channels, self.inception4d.out_channels
        self.aux1 = AuxClassifier(aux1_channels, num_classes, batch_norm) if aux_classifiers else None
        self.aux2 = AuxClassifier(aux2_channels, num_classes, batch_norm) if aux_classifiers else None
        # Table 1's 7×7 average pool over the 7×7 maps of a 224 input is a global average; written as one so
        # smaller inputs work too.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.inception5b.out_channels, num_classes)
        init_xavier_(self)

    def _build_stem(self, in_channels: int, lrn: bool, batch_norm: bool) -> None:
        # Table 1 prints 34M ops for conv1, but 112² · 64 · 7² · 3 = 118M; the layer is as the table describes it.
        self.conv1 = conv_relu(in_channels, 64, 7, stride=2, batch_norm=batch_norm)
        # Ceil-mode pooling (as in Caffe) gives Table 1's sizes 112 → 56 → 28 → 14 → 7; floor mode gives 55.
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = LRN() if lrn else nn.Identity()
        self.conv2 = conv_relu(64, 64, 1, batch_norm=batch_norm)
        self.conv3 = conv_relu(64, 192, 3, batch_norm=batch_norm)
        self.lrn2 = LRN() if lrn else nn.Identity()
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

    def _build_inceptions(self, block: type[Inception] | type[NaiveInception], batch_norm: bool) -> None:
        channels = 192
        pool_before = {"4a": "maxpool3", "5a": "maxpool4"}  # Table 1's 3×3/2 pools between stages
        for name, row in INCEPTION_ROWS.items():
            if name in pool_before:
                setattr(self, pool_before[name], nn.MaxPool2d(3, stride=2, ceil_mode=True))
            module = block(channels, row, batch_norm=batch_norm)
            setattr(self, f"inception{name}", module)
            channels = module.out_channels

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        aux: list[torch.Tensor] = []
        x = self.maxpool2(self.lrn2(self.conv3(self.conv2(self.lrn1(self.maxpool1(self.conv1(x)))))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        if self.aux1 is not None and self.training:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if self.aux2 is not None and self.training:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return ClassifierOutput(logits, tuple(aux))


# Table 1's inception rows: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj.
# Table 1's ops for 5a (54M) do not follow from its own widths, which give 51M (a 5×5 reduce of 48, as in 5b, would
# give 54M); we keep the printed widths.
INCEPTION_ROWS: dict[str, Row] = {
    "3a": Row(64, 96, 128, 16, 32, 32),
    "3b": Row(128, 128, 192, 32, 96, 64),
    "4a": Row(192, 96, 208, 16, 48, 64),
    "4b": Row(160, 112, 224, 24, 64, 64),
    "4c": Row(128, 128, 256, 24, 64, 64),
    "4d": Row(112, 144, 288, 32, 64, 64),
    "4e": Row(256, 160, 320, 32, 128, 128),
    "5a": Row(256, 160, 320, 32, 128, 128),
    "5b": Row(384, 192, 384, 48, 128, 128),
}

PRESETS: dict[str, dict[str, Any]] = {
    "googlenet": {},
}
