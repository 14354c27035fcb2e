"""DenseNet and DenseNet-BC (Huang et al. 2017) for ImageNet and CIFAR."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lightning_depth.models.layers import check_choice, check_positive_int, check_probability, init_kaiming_

Stem = Literal["imagenet", "cifar"]
BOTTLENECK_WIDTH = 4  # §3 "Bottleneck layers": the 1×1 convolution produces 4k feature maps


class DenseLayer(nn.Module):
    """One composite function H_ℓ: BN-ReLU-3×3 conv (k maps); with a bottleneck, BN-ReLU-1×1 conv (4k) first.

    Without a bottleneck the single BN-ReLU-conv is named ``norm1``/``conv1``; with one, names follow torchvision.
    """

    def __init__(
        self, in_channels: int, growth_rate: int, bottleneck: bool, drop_rate: float, memory_efficient: bool
    ) -> None:
        super().__init__()
        first_out, first_kernel = (BOTTLENECK_WIDTH * growth_rate, 1) if bottleneck else (growth_rate, 3)
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, first_out, first_kernel, padding=first_kernel // 2, bias=False)
        if bottleneck:
            self.norm2 = nn.BatchNorm2d(first_out)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(first_out, growth_rate, 3, padding=1, bias=False)
        self.bottleneck = bottleneck
        self.drop_rate = drop_rate
        self.memory_efficient = memory_efficient

    def concat_norm_conv(self, *inputs: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """Concatenation → BN → ReLU → first convolution: the part whose intermediates grow with depth."""
        x = torch.cat(inputs, 1)
        if update_stats or not self.norm1.training:
            x = self.norm1(x)
        else:
            # A recomputation in backward normalises with the same batch statistics but must not move the running
            # averages a second time (torchvision's checkpointing does): momentum 0 leaves them exactly as they are.
            norm = self.norm1
            x = F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, True, 0.0, norm.eps)
        return self.conv1(self.relu1(x))

    def checkpointed(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        calls: list[None] = []

        def run(*tensors: torch.Tensor) -> torch.Tensor:
            calls.append(None)
            return self.concat_norm_conv(*tensors, update_stats=len(calls) == 1)

        return checkpoint(run, *inputs, use_reentrant=False)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and any(t.requires_grad for t in inputs):
            out = self.checkpointed(inputs)
        else:
            out = self.concat_norm_conv(*inputs)
        # §4.2: dropout after every convolution but the first one of the network (torchvision: after the 3×3 only).
        out = F.dropout(out, self.drop_rate, self.training)
        if self.bottleneck:
            out = F.dropout(self.conv2(self.relu2(self.norm2(out))), self.drop_rate, self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers, each reading the concatenation of the block input and all earlier outputs."""

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, **layer_kwargs: Any) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_channels + i * growth_rate, growth_rate, **layer_kwargs)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


def transition(in_channels: int, out_channels: int, drop_rate: float) -> nn.Sequential:
    """BN-ReLU-1×1 conv-2×2 average pool between two blocks (§3 "Pooling layers")."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        norm=nn.BatchNorm2d(in_channels),
        relu=nn.ReLU(inplace=True),
        conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
    )
    if drop_rate > 0:
        layers["drop"] = nn.Dropout(drop_rate)
    layers["pool"] = nn.AvgPool2d(2, stride=2)
    return nn.Sequential(layers)


class DenseNet(nn.Module):
    """Densely connected network: a stem, dense blocks joined by transitions, BN-ReLU, global pooling, a classifier.

    Module names match torchvision's DenseNet (``features.conv0``, ``features.denseblock1.denselayer1.norm1``,
    ``features.transition1``, ``features.norm5``, ``classifier``), so DenseNet-121/169/201 load its state dicts.

    Initialisation follows the authors' Torch code: convolutions Kaiming normal (fan_out, ReLU gain), BN weight 1,
    bias 0, linear layer PyTorch's default weight and a zero bias.

    Args:
        depth: number of weight layers. ImageNet: 121, 169, 201, 264 (Table 1, DenseNet-BC). CIFAR: 3n+4 without
            bottleneck, 6n+4 with (Table 2; three blocks of n layers). Must be None, or agree, when block_config
            is given.
        num_classes: number of output classes.
        in_channels: number of input image channels.
        growth_rate: k, the feature maps each layer adds (§3 "Growth rate").
        block_config: layers per dense block; overrides the block layout that depth would choose.
        bottleneck: the "B" of DenseNet-BC: a 1×1 convolution to 4k maps before each 3×3 (§3 "Bottleneck layers").
        compression: θ, the "C" of DenseNet-BC: a transition outputs ⌊θm⌋ of its m input maps (§3 "Compression");
            1.0 keeps them all.
        stem: "imagenet" (7×7/2 conv with 2k maps, BN-ReLU, 3×3/2 max pool; Table 1) or "cifar" (one 3×3 conv with
            16 maps, 2k for DenseNet-BC; §3 "Implementation Details").
        drop_rate: dropout after each convolution but the first (§4.2; the paper uses 0.2 on CIFAR without
            augmentation).
        memory_efficient: recompute concatenation, BN, ReLU and the first convolution of each layer in the backward
            pass instead of storing them (Pleiss et al. 2017); same outputs and gradients, memory linear in depth.
    """

    def __init__(
        self,
        depth: int | None = 121,
        num_classes: int = 1000,
        in_channels: int = 3,
        growth_rate: int = 32,
        block_config: tuple[int, ...] | None = None,
        bottleneck: bool = True,
        compression: float = 0.5,
        stem: Stem = "imagenet",
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        check_positive_int("growth_rate", growth_rate)
        check_choice("bottleneck", bottleneck, (True, False))
        check_choice("memory_efficient", memory_efficient, (True, False))
        check_choice("stem", stem, ("imagenet", "cifar"))
        check_probability("drop_rate", drop_rate)
        if isinstance(compression, bool) or not isinstance(compression, (int, float)) or not 0 < compression <= 1:
            raise ValueError(f"compression={compression!r} is not allowed; allowed: a number in (0, 1]")
        block_config = resolve_blocks(depth, block_config, bottleneck, stem)
        self.depth = implied_depth(block_config, bottleneck) if depth is None else depth
        self.growth_rate, self.block_config, self.bottleneck = growth_rate, block_config, bottleneck
        self.compression, self.stem = compression, stem

        self.features = nn.Sequential(self._stem(in_channels))
        channels = self.features.conv0.out_channels
        layer_kwargs = {"bottleneck": bottleneck, "drop_rate": drop_rate, "memory_efficient": memory_efficient}
        for i, num_layers in enumerate(block_config, start=1):
            self.features.add_module(f"denseblock{i}", DenseBlock(num_layers, channels, growth_rate, **layer_kwargs))
            channels += num_layers * growth_rate
            if i < len(block_config):
                out = int(compression * channels)  # ⌊θm⌋
                self.features.add_module(f"transition{i}", transition(channels, out, drop_rate))
                channels = out
        # torchvision's name for the final BN, kept for every block count so that its weights load unchanged.
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        init_kaiming_(self)

    def _stem(self, in_channels: int) -> OrderedDict[str, nn.Module]:
        k = self.growth_rate
        if self.stem == "imagenet":
            return OrderedDict(
                conv0=nn.Conv2d(in_channels, 2 * k, 7, stride=2, padding=3, bias=False),
                norm0=nn.BatchNorm2d(2 * k),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(3, stride=2, padding=1),
            )
        # The paper doubles the growth rate only for DenseNet-BC (bottleneck and compression together).
        width = 2 * k if self.bottleneck and self.compression < 1 else 16
        return OrderedDict(conv0=nn.Conv2d(in_channels, width, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def implied_depth(block_config: tuple[int, ...], bottleneck: bool) -> int:
    """Weight layers: the first convolution, one or two per dense layer, one per transition, the classifier."""
    return 1 + sum(block_config) * (2 if bottleneck else 1) + (len(block_config) - 1) + 1


def resolve_blocks(
    depth: int | None, block_config: tuple[int, ...] | None, bottleneck: bool, stem: Stem
) -> tuple[int, ...]:
    """Layers per block for ``depth`` (or the given ``block_config``), or a ValueError saying what is allowed."""
    if block_config is not None:
        block_config = tuple(block_config)
        if not block_config or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in block_config):
            raise ValueError(f"block_config={block_config!r} is not allowed; allowed: a tuple of integers >= 1")
        implied = implied_depth(block_config, bottleneck)
        named = stem == "imagenet" and bottleneck and IMAGENET_BLOCKS.get(depth) == block_config
        if depth is not None and depth != implied and not named:
            raise ValueError(
                f"depth={depth} disagrees with block_config={block_config} (bottleneck={bottleneck}), which has "
                f"{implied} weight layers; pass depth=None with block_config"
            )
        return block_config
    if depth is None:
        raise ValueError(
            "depth=None needs a block_config; give a depth (e.g. 121) or block_config (e.g. (6, 12, 24, 16))"
        )
    check_positive_int("depth", depth)
    if stem == "imagenet":
        if depth not in IMAGENET_BLOCKS:
            raise ValueError(
                f"depth={depth} is not an ImageNet DenseNet depth (Table 1); try "
                f"{', '.join(map(str, IMAGENET_BLOCKS))}, or give block_config"
            )
        if not bottleneck:
            raise ValueError(
                f"depth={depth} on ImageNet is a DenseNet-BC (Table 1) and needs bottleneck=True; for the same blocks "
                f"without bottlenecks pass depth=None, block_config={IMAGENET_BLOCKS[depth]}"
            )
        return IMAGENET_BLOCKS[depth]
    per_block = 6 if bottleneck else 3  # Table 2: (L - 4) / 6 layers per block with bottleneck, (L - 4) / 3 without
    if depth <= 4 or (depth - 4) % per_block:
        examples = "100, 190, 250" if bottleneck else "40, 100"
        raise ValueError(
            f"depth={depth} is not {per_block}n+4 for a CIFAR DenseNet with bottleneck={bottleneck}; try {examples}"
        )
    return ((depth - 4) // per_block,) * 3


# Table 1 (DenseNet-BC, k = 32): depth -> layers in each of the four dense blocks. By the paper's own count (first
# conv, two per layer, transitions, classifier) 264's blocks give 265 weight layers; we keep the paper's name.
IMAGENET_BLOCKS: dict[int, tuple[int, ...]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}

CIFAR10: dict[str, Any] = {"stem": "cifar", "num_classes": 10}
PLAIN: dict[str, Any] = {"bottleneck": False, "compression": 1.0}
BC: dict[str, Any] = {"bottleneck": True, "compression": 0.5}
PRESETS: dict[str, dict[str, Any]] = {
    **{f"densenet{d}": {"depth": d} for d in IMAGENET_BLOCKS},
    # Table 2: DenseNet (L, k) and DenseNet-BC (L, k) on CIFAR.
    "densenet_40_12": {"depth": 40, "growth_rate": 12, **PLAIN, **CIFAR10},
    "densenet_100_12": {"depth": 100, "growth_rate": 12, **PLAIN, **CIFAR10},
    "densenet_100_24": {"depth": 100, "growth_rate": 24, **PLAIN, **CIFAR10},
    "densenet_bc_100_12": {"depth": 100, "growth_rate": 12, **BC, **CIFAR10},
    "densenet_bc_250_24": {"depth": 250, "growth_rate": 24, **BC, **CIFAR10},
    "densenet_bc_190_40": {"depth": 190, "growth_rate": 40, **BC, **CIFAR10},
}
