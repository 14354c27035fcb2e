"""ResNet (He et al. 2015) and pre-activation ResNet (He et al. 2016) for ImageNet and CIFAR."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_depth.models.layers import check_choice, check_positive_int, init_kaiming_

Block = Literal["basic", "bottleneck"]
Shortcut = Literal["A", "B", "C"]
Stem = Literal["imagenet", "cifar"]
PreactInput = Literal["branch", "shared", "none"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A (He et al. 2015, §3.3): identity, subsampled by the stride, with the extra channels zero-padded."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # The paper does not say where the zeros go; appending them keeps the identity channels in place.
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def make_shortcut(kind: Shortcut, in_channels: int, out_channels: int, stride: int, preact: bool) -> nn.Module | None:
    """The shortcut of one unit; None is the plain identity."""
    changes_shape = stride != 1 or in_channels != out_channels
    if kind == "A" or (kind == "B" and not changes_shape):
        return ZeroPadShortcut(in_channels, out_channels, stride) if changes_shape else None
    conv = conv1x1(in_channels, out_channels, stride)
    # Pre-activation projections are a bare 1×1 convolution, as in the authors' code (KaimingHe/resnet-1k-layers):
    # the next unit's BN normalises the sum. Post-activation projections carry a BN, like torchvision's downsample.
    return nn.Sequential(conv) if preact else nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class ResidualUnit(nn.Module):
    """What both block kinds share: how the residual branch meets the shortcut.

    Post-activation (He et al. 2015): relu(branch(x) + shortcut(x)). Full pre-activation (He et al. 2016, Fig. 4e):
    a = relu(bn1(x)); branch(a) + shortcut(x), no ReLU after the addition. Where ``preact_input`` is "shared", the
    shortcut also reads the pre-activated ``a`` (the first unit of a stage, whose shortcut changes shape); "none"
    means the input is already activated (the first unit, right after the stem's BN-ReLU).
    """

    bn1: nn.BatchNorm2d | None
    downsample: nn.Module | None

    def __init__(self, preact: bool, preact_input: PreactInput, residual: bool) -> None:
        super().__init__()
        self.preact = preact
        self.preact_input = preact_input
        self.residual = residual
        self.relu = nn.ReLU(inplace=True)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.preact:
            out = self.branch(x)
            return self.relu(out + self.shortcut(x) if self.residual else out)
        act = x if self.bn1 is None else self.relu(self.bn1(x))
        out = self.branch(act)
        if not self.residual:
            return out
        return out + self.shortcut(x if self.preact_input == "branch" else act)


class BasicBlock(ResidualUnit):
    """Two 3×3 convolutions (He et al. 2015, Fig. 5 left). ``bn<i>`` is the BN next to ``conv<i>``: after it
    post-activation, before it pre-activation."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        preact: bool = False,
        preact_input: PreactInput = "branch",
        residual: bool = True,
        downsample: nn.Module | None = None,
        stride_in_3x3: bool = False,  # basic blocks have only 3×3 convolutions: the stride is always there
    ) -> None:
        super().__init__(preact, preact_input, residual)
        # Registered in torchvision's order (conv1, bn1, …, downsample) so that state dict keys line up.
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = None if preact and preact_input == "none" else nn.BatchNorm2d(in_channels if preact else channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            return self.conv2(self.relu(self.bn2(self.conv1(x))))
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class Bottleneck(ResidualUnit):
    """1×1 reduce → 3×3 → 1×1 expand ×4 (He et al. 2015, Fig. 5 right).

    The paper strides the first 1×1 (its released Caffe models do); ``stride_in_3x3`` moves the stride to the 3×3
    as torchvision does ("ResNet v1.5"), which sees every input pixel and costs more multiply-adds.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        *,
        preact: bool = False,
        preact_input: PreactInput = "branch",
        residual: bool = True,
        downsample: nn.Module | None = None,
        stride_in_3x3: bool = False,
    ) -> None:
        super().__init__(preact, preact_input, residual)
        out_channels = channels * self.expansion
        stride_1x1, stride_3x3 = (1, stride) if stride_in_3x3 else (stride, 1)
        self.conv1 = conv1x1(in_channels, channels, stride_1x1)
        self.bn1 = None if preact and preact_input == "none" else nn.BatchNorm2d(in_channels if preact else channels)
        self.conv2 = conv3x3(channels, channels, stride_3x3)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = conv1x1(channels, out_channels)
        self.bn3 = nn.BatchNorm2d(channels if preact else out_channels)
        self.downsample = downsample

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            x = self.conv2(self.relu(self.bn2(self.conv1(x))))
            return self.conv3(self.relu(self.bn3(x)))
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


class ResNet(nn.Module):
    """Residual network: a stem, stages of residual units, global average pooling and a linear classifier.

    Module names match torchvision's ResNet (``conv1``, ``bn1``, ``layer1``…, ``downsample.0/.1``, ``fc``), so an
    ImageNet network with shortcut "B", ``stride_in_3x3=True`` and post-activation has torchvision's state dict keys.

    Initialisation: convolutions Kaiming normal (fan_out, ReLU gain) as in He et al. (2015b, "Delving deep") which
    the paper cites; BN weight 1, bias 0; linear layer PyTorch's default weight and a zero bias (as the authors'
    Torch code fb.resnet.torch does).

    Args:
        depth: number of weight layers. ImageNet: 18, 34, 50, 101, 152 (He et al. 2015, Table 1) or 200 (He et al.
            2016, Table 5). CIFAR: 6n+2 with basic blocks (He et al. 2015, §4.2), 9n+2 with bottlenecks (He et al.
            2016, §4.1).
        num_classes: number of output classes.
        in_channels: number of input image channels.
        block: "basic" (two 3×3) or "bottleneck" (1×1, 3×3, 1×1); None picks the paper's block for the depth:
            on ImageNet Table 1's; on CIFAR bottleneck for 164 and 1001 (He et al. 2016), otherwise basic when the
            depth is 6n+2 and bottleneck when it is only 9n+2.
        preact: full pre-activation units, BN-ReLU-conv, and a final BN-ReLU before pooling (He et al. 2016, §4).
        shortcut: He et al. 2015, §3.3 / Table 3: "A" zero-padded identity, "B" projections where the shape changes,
            "C" projections everywhere. None is the paper's choice: "A" for CIFAR basic-block nets (§4.2), "B"
            otherwise. Must stay None when ``residual=False``.
        residual: False builds the paper's plain network, the same layers without any shortcut (§4.1, Table 2).
        stem: "imagenet" (7×7/2 conv, 64 channels, 3×3/2 max pool) or "cifar" (3×3 conv, 16 channels, §4.2).
        stride_in_3x3: bottlenecks downsample in the 3×3 (torchvision) instead of the first 1×1 (the paper).
            Basic blocks always stride their first 3×3, so it does not change them.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        block: Block | None = None,
        preact: bool = False,
        shortcut: Shortcut | None = None,
        residual: bool = True,
        stem: Stem = "imagenet",
        stride_in_3x3: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        for name, value in (("preact", preact), ("residual", residual), ("stride_in_3x3", stride_in_3x3)):
            check_choice(name, value, (False, True))
        check_choice("stem", stem, ("imagenet", "cifar"))
        check_choice("block", block, (None, "basic", "bottleneck"))
        check_choice("shortcut", shortcut, (None, "A", "B", "C"))
        if not residual and shortcut is not None:
            raise ValueError(
                f"shortcut={shortcut!r} needs residual=True: the plain network (residual=False) has no shortcuts; "
                "leave shortcut=None"
            )
        block, stages = resolve_depth(depth, block, stem)
        if residual and shortcut is None:
            shortcut = "A" if stem == "cifar" and block == "basic" else "B"
        self.depth, self.block, self.stages, self.stem = depth, block, stages, stem
        self.preact, self.shortcut, self.residual, self.stride_in_3x3 = preact, shortcut, residual, stride_in_3x3

        width = STEM_WIDTH[stem]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, width)
        # Pre-activation keeps this BN-ReLU: He et al. 2016 (appendix) apply the first unit's activation right after
        # conv1, before the split into two paths, so that unit has none of its own.
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        in_width = width
        for index, (units, base) in enumerate(zip(stages, STAGE_WIDTHS[stem]), start=1):
            layer, in_width = self._make_stage(index, units, in_width, base, stride=1 if index == 1 else 2)
            self.add_module(f"layer{index}", layer)
        self.final_bn = nn.BatchNorm2d(in_width) if preact else None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_width, num_classes)
        init_kaiming_(self)

    def _make_stage(self, index: int, units: int, in_width: int, base: int, stride: int) -> tuple[nn.Sequential, int]:
        unit_cls = BLOCKS[self.block]
        out_width = base * unit_cls.expansion
        layers = []
        for i in range(units):
            unit_stride = stride if i == 0 else 1
            downsample = None
            if self.residual:
                downsample = make_shortcut(self.shortcut, in_width, out_width, unit_stride, self.preact)
            # He et al. 2016 (and fb.resnet.torch's preresnet): the first unit of a stage pre-activates once for both
            # paths; the very first unit takes the stem's activation.
            preact_input: PreactInput = "branch" if i > 0 else ("none" if index == 1 else "shared")
            layers.append(
                unit_cls(
                    in_width, base, unit_stride, preact=self.preact, preact_input=preact_input,
                    residual=self.residual, downsample=downsample, stride_in_3x3=self.stride_in_3x3,
                )
            )
            in_width = out_width
        return nn.Sequential(*layers), out_width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, len(self.stages) + 1):
            x = getattr(self, f"layer{index}")(x)
        if self.final_bn is not None:
            x = self.relu(self.final_bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resolve_depth(depth: int, block: Block | None, stem: Stem) -> tuple[Block, tuple[int, ...]]:
    """The block kind and units per stage for ``depth``, or a ValueError saying which depths exist."""
    check_positive_int("depth", depth)
    if stem == "imagenet":
        if depth not in IMAGENET_DEPTHS:
            raise ValueError(
                f"depth={depth} is not an ImageNet ResNet depth (He et al. 2015, Table 1; 200: He et al. 2016); "
                f"try {', '.join(map(str, IMAGENET_DEPTHS))}"
            )
        table_block, stages = IMAGENET_DEPTHS[depth]
        if block is not None and block != table_block:
            same = ", ".join(str(d) for d, (b, _) in IMAGENET_DEPTHS.items() if b == block)
            raise ValueError(
                f"depth={depth} on ImageNet is built from {table_block} blocks (Table 1), not block={block!r}; "
                f"ImageNet depths with {block} blocks: {same}"
            )
        return table_block, stages
    # Three stages of n units each, plus the first convolution and the classifier.
    fits = {b: depth > 2 and (depth - 2) % (3 * n) == 0 for b, n in LAYERS_PER_UNIT.items()}
    if block is None:
        block = CIFAR_PAPER_BLOCKS.get(depth) or ("basic" if fits["basic"] else "bottleneck")
        if not fits[block]:
            raise ValueError(
                f"depth={depth} is neither 6n+2 (basic blocks; try {_cifar_examples('basic')}) nor 9n+2 "
                f"(bottleneck blocks; try {_cifar_examples('bottleneck')}) for a CIFAR ResNet"
            )
    per_stage = 3 * LAYERS_PER_UNIT[block]
    if not fits[block]:
        raise ValueError(
            f"depth={depth} is not {per_stage}n+2 for a CIFAR ResNet with {block} blocks; try {_cifar_examples(block)}"
        )
    return block, (((depth - 2) // per_stage),) * 3


def _cifar_examples(block: Block) -> str:
    return ", ".join(str(d) for d, b in CIFAR_PAPER_BLOCKS.items() if b == block)


BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
LAYERS_PER_UNIT = {"basic": 2, "bottleneck": 3}
STEM_WIDTH = {"imagenet": 64, "cifar": 16}
# Base widths per stage; a bottleneck's output is 4× its base (CIFAR: 16 → 64/128/256, He et al. 2016).
STAGE_WIDTHS = {"imagenet": (64, 128, 256, 512), "cifar": (16, 32, 64)}

# He et al. 2015, Table 1: depth -> (block, units per stage). 200 is He et al. 2016, Table 5, with the stages of the
# authors' released code (fb.resnet.torch), which the paper does not print.
IMAGENET_DEPTHS: dict[int, tuple[Block, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

# The CIFAR depths the papers train, with their block. 56, 110 and 164 are both 6n+2 and 9n+2, so a depth alone
# does not name the block: He et al. 2015 (Table 6) uses basic blocks, He et al. 2016 bottlenecks for 164 and 1001.
CIFAR_PAPER_BLOCKS: dict[int, Block] = {
    20: "basic", 32: "basic", 44: "basic", 56: "basic", 110: "basic", 1202: "basic",
    164: "bottleneck", 1001: "bottleneck",
}

CIFAR10: dict[str, Any] = {"stem": "cifar", "num_classes": 10}
PRESETS: dict[str, dict[str, Any]] = {
    **{f"resnet{d}": {"depth": d} for d in IMAGENET_DEPTHS},
    # He et al. 2015, Table 2 / Fig. 4: plain networks on ImageNet; Fig. 6: plain networks on CIFAR-10.
    "plain18": {"depth": 18, "residual": False},
    "plain34": {"depth": 34, "residual": False},
    **{f"plain{d}": {"depth": d, "residual": False, **CIFAR10} for d in (20, 32, 44, 56)},
    # He et al. 2015, Table 6 (option A); 164 and 1001 are He et al. 2016's "original" bottleneck nets (Tables 2-3).
    **{f"resnet{d}": {"depth": d, **CIFAR10} for d in CIFAR_PAPER_BLOCKS},
    # He et al. 2016, Tables 2-3 (CIFAR) and Table 5 (ImageNet).
    **{f"preact_resnet{d}": {"depth": d, "preact": True, **CIFAR10} for d in (110, 164, 1001)},
    "preact_resnet152": {"depth": 152, "preact": True},
    "preact_resnet200": {"depth": 200, "preact": True},
}
