"""ResNet and DenseNet against the papers' tables, torchvision's counts and their own toggles."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_depth.models import densenet, resnet
from lightning_depth.models.densenet import DenseNet
from lightning_depth.models.resnet import ResNet, ZeroPadShortcut

pytestmark = pytest.mark.usefixtures("one_thread")




def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(cls, **kwargs) -> nn.Module:
    """Build without allocating or initialising weights: enough to count parameters and multiply-adds."""
    with torch.device("meta"):
        return cls(**kwargs)


def multiply_adds(model: nn.Module, size: int) -> int:
    """Multiply-adds of convolutions and linear layers for one image, the papers' FLOPs convention."""
    total = 0

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model(torch.empty(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return total


def check_trains(model: nn.Module, size: int, num_classes: int) -> None:
    """Right output shape, finite values, and a gradient on every parameter."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


# ---------------------------------------------------------------- ResNet: toggles on small networks

RESNET_TOGGLES = [
    # CIFAR, one unit per stage: depth 8 = 6·1+2 (basic), 11 = 9·1+2 (bottleneck)
    {"depth": 8, "stem": "cifar"},
    {"depth": 8, "stem": "cifar", "shortcut": "B"},
    {"depth": 8, "stem": "cifar", "shortcut": "C"},
    {"depth": 8, "stem": "cifar", "residual": False},
    {"depth": 8, "stem": "cifar", "preact": True},
    {"depth": 8, "stem": "cifar", "preact": True, "shortcut": "C"},
    {"depth": 8, "stem": "cifar", "preact": True, "residual": False},
    {"depth": 11, "stem": "cifar"},
    {"depth": 11, "stem": "cifar", "shortcut": "A"},
    {"depth": 11, "stem": "cifar", "preact": True},
    {"depth": 11, "stem": "cifar", "preact": True, "shortcut": "A"},
    {"depth": 11, "stem": "cifar", "stride_in_3x3": True},
    {"depth": 20, "stem": "cifar", "block": "bottleneck"},
    {"depth": 11, "stem": "cifar", "shortcut": None},  # 9n+2 only: bottleneck with projections (B)
    # ImageNet stem on a small input
    {"depth": 18},
    {"depth": 18, "shortcut": "A", "preact": True},
]


@pytest.mark.parametrize("toggles", RESNET_TOGGLES, ids=lambda t: "-".join(f"{k}={v}" for k, v in t.items()))
def test_resnet_forward_backward(toggles):
    check_trains(ResNet(num_classes=7, **toggles), size=32, num_classes=7)


def test_resnet_in_channels():
    assert ResNet(8, stem="cifar", in_channels=1, num_classes=3)(torch.randn(2, 1, 16, 16)).shape == (2, 3)


@pytest.mark.parametrize(
    ("depth", "block"),
    # He et al. 2015, Table 6 (basic) and He et al. 2016 (bottleneck for 164, 1001). 56, 110 and 164 are both 6n+2
    # and 9n+2, so the paper's choice is looked up; other depths go to basic when 6n+2 (26), else bottleneck (29).
    [(20, "basic"), (56, "basic"), (110, "basic"), (1202, "basic"), (164, "bottleneck"), (1001, "bottleneck"),
     (26, "basic"), (29, "bottleneck")],
)
def test_cifar_default_block(depth, block):
    assert resnet.resolve_depth(depth, None, "cifar")[0] == block


def test_shortcut_a_adds_no_parameters_and_c_adds_projections_everywhere():
    plain = num_params(on_meta(ResNet, depth=20, stem="cifar", residual=False))
    assert num_params(on_meta(ResNet, depth=20, stem="cifar", shortcut="A")) == plain
    b = on_meta(ResNet, depth=20, stem="cifar", shortcut="B")
    c = on_meta(ResNet, depth=20, stem="cifar", shortcut="C")
    assert sum(u.downsample is not None for u in b.modules() if isinstance(u, resnet.ResidualUnit)) == 2
    assert all(u.downsample is not None for u in c.modules() if isinstance(u, resnet.ResidualUnit))
    assert plain < num_params(b) < num_params(c)


def test_plain_network_has_no_shortcut():
    model = on_meta(ResNet, depth=34, residual=False)
    assert not any(isinstance(m, ZeroPadShortcut) or getattr(m, "downsample", None) for m in model.modules())


def test_option_a_subsamples_and_zero_pads():
    x = torch.arange(2 * 4 * 4, dtype=torch.float).reshape(1, 2, 4, 4)
    out = ZeroPadShortcut(2, 5, stride=2)(x)
    assert out.shape == (1, 5, 2, 2)
    assert torch.equal(out[:, :2], x[:, :, ::2, ::2])
    assert not out[:, 2:].any()


@pytest.mark.parametrize(("stride_in_3x3", "strides"), [(False, (2, 1)), (True, (1, 2))])
def test_bottleneck_stride_placement(stride_in_3x3, strides):
    # He et al. 2015 stride the first 1×1 of a downsampling bottleneck; torchvision strides the 3×3.
    unit = on_meta(ResNet, depth=50, stride_in_3x3=stride_in_3x3).layer2[0]
    assert (unit.conv1.stride[0], unit.conv2.stride[0]) == strides


def test_postact_units_end_in_relu_and_preact_units_do_not():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    post = ResNet(8, stem="cifar").layer1(x)
    pre = ResNet(8, stem="cifar", preact=True).layer1(x)
    assert post.min() >= 0  # ReLU after the addition (He et al. 2015)
    assert pre.min() < 0  # no ReLU after the addition (He et al. 2016)


def test_preact_network_structure():
    model = on_meta(ResNet, depth=164, stem="cifar", preact=True)
    # The stem's BN-ReLU pre-activates the first unit; the network ends with BN-ReLU (He et al. 2016, appendix).
    assert model.layer1[0].bn1 is None and model.layer1[0].preact_input == "none"
    assert model.layer2[0].preact_input == "shared" and model.layer2[1].preact_input == "branch"
    assert isinstance(model.final_bn, nn.BatchNorm2d)
    # Pre-activation projections are bare 1×1 convolutions (the next unit's BN follows).
    assert len(model.layer2[0].downsample) == 1


# ---------------------------------------------------------------- ResNet: golden numbers

# He et al. 2015, Table 6 ("# params", CIFAR-10, option A), millions as printed.
CIFAR_RESNET_PARAMS_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
                         "resnet110": 1.7, "resnet1202": 19.4}
# He et al. 2016: ResNet-164 has 1.7 M parameters, original and pre-activation alike.
PREACT_PARAMS_M = {"resnet164": 1.7, "preact_resnet164": 1.7}
# torchvision.models.resnet{18,34,50,101,152}(): exact parameter counts.
TORCHVISION_RESNET_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# He et al. 2015, Table 1: FLOPs (multiply-adds) at 224×224, ×10⁹ as printed.
IMAGENET_RESNET_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


def _printed_digits(value: float) -> int:
    return len(str(value).split(".")[1])


@pytest.mark.parametrize("preset", sorted(resnet.PRESETS))
def test_resnet_presets(preset):
    model = on_meta(ResNet, **resnet.PRESETS[preset])
    assert model.fc.out_features == (10 if model.stem == "cifar" else 1000)
    millions = {**CIFAR_RESNET_PARAMS_M, **PREACT_PARAMS_M}.get(preset)
    if millions is not None:
        assert round(num_params(model) / 1e6, _printed_digits(millions)) == millions
    if preset in {f"resnet{d}" for d in TORCHVISION_RESNET_PARAMS}:
        assert num_params(model) == TORCHVISION_RESNET_PARAMS[model.depth]


def test_preact_resnet1001_params_near_paper():
    # He et al. 2016, Table 3 prints 10.2 M. The architecture its released code builds (resnet-1k-layers: 16 → 64/128/
    # 256 bottlenecks, 111 units per stage, bare 1×1 projections) has 10,327,706 parameters, i.e. 10.3 M.
    count = num_params(on_meta(ResNet, **resnet.PRESETS["preact_resnet1001"]))
    assert count == 10_327_706
    assert abs(count / 1e6 - 10.2) < 0.15


@pytest.mark.parametrize("stride_in_3x3", [False, True])
def test_parameter_count_does_not_depend_on_stride_placement(stride_in_3x3):
    assert num_params(on_meta(ResNet, depth=50, stride_in_3x3=stride_in_3x3)) == TORCHVISION_RESNET_PARAMS[50]


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_counts_are_current(depth):
    assert num_params(on_meta(getattr(torchvision.models, f"resnet{depth}"))) == TORCHVISION_RESNET_PARAMS[depth]


@pytest.mark.parametrize("depth", IMAGENET_RESNET_GFLOPS)
def test_imagenet_resnet_flops_match_table1(depth):
    gflops = multiply_adds(on_meta(ResNet, depth=depth), 224) / 1e9
    # Table 1 prints one decimal (3.66 appears as 3.6), so agree within one unit of that digit.
    assert abs(gflops - IMAGENET_RESNET_GFLOPS[depth]) < 0.1


def test_stride_in_3x3_costs_more():
    # torchvision's placement (v1.5) raises ResNet-50 from ≈3.8 to ≈4.1 GFLOPs.
    assert round(multiply_adds(on_meta(ResNet, depth=50, stride_in_3x3=True), 224) / 1e9, 1) == 4.1


# ---------------------------------------------------------------- ResNet: errors


@pytest.mark.parametrize(
    ("toggles", "message"),
    [
        ({"depth": 19}, r"depth=19 is not an ImageNet ResNet depth.*18, 34, 50, 101, 152"),
        ({"depth": 18, "block": "bottleneck"}, r"depth=18 on ImageNet is built from basic blocks.*50, 101, 152"),
        ({"depth": 21, "stem": "cifar", "block": "basic"}, r"depth=21 is not 6n\+2.*basic blocks; try 20, 32, 44"),
        ({"depth": 21, "stem": "cifar"}, r"depth=21 is neither 6n\+2.*nor 9n\+2"),
        ({"depth": 32, "stem": "cifar", "block": "bottleneck"}, r"depth=32 is not 9n\+2.*try 164, 1001"),
        ({"depth": 2, "stem": "cifar"}, r"depth=2 is neither"),
        ({"depth": 0}, r"depth=0 is not allowed"),
        ({"depth": 18, "shortcut": "A", "residual": False}, r"shortcut='A' needs residual=True"),
        ({"depth": 18, "shortcut": "D"}, r"shortcut='D' is not allowed; allowed: None, 'A', 'B', 'C'"),
        ({"depth": 18, "block": "wide"}, r"block='wide' is not allowed"),
        ({"depth": 18, "stem": "mnist"}, r"stem='mnist' is not allowed; allowed: 'imagenet', 'cifar'"),
        ({"depth": 18, "preact": "yes"}, r"preact='yes' is not allowed"),
        ({"depth": 18, "num_classes": 0}, r"num_classes=0 is not allowed"),
    ],
)
def test_resnet_rejects_invalid_toggles(toggles, message):
    with pytest.raises(ValueError, match=message):
        ResNet(**toggles)


# ---------------------------------------------------------------- DenseNet: toggles on small networks

DENSENET_TOGGLES = [
    {"depth": None, "block_config": (2, 2, 2), "stem": "cifar"},
    {"depth": None, "block_config": (2, 2, 2), "stem": "cifar", "bottleneck": False, "compression": 1.0},
    {"depth": None, "block_config": (2, 2, 2), "stem": "cifar", "bottleneck": False},
    {"depth": None, "block_config": (2, 2, 2), "stem": "cifar", "compression": 1.0},
    {"depth": None, "block_config": (2, 2, 2), "stem": "cifar", "memory_efficient": True},
    {"depth": None, "block_config": (2, 2, 2), "stem": "cifar", "drop_rate": 0.2},
    {"depth": 10, "stem": "cifar"},  # 6·1+4 with bottleneck
    {"depth": 7, "stem": "cifar", "bottleneck": False},  # 3·1+4
    {"depth": None, "block_config": (1, 2, 1, 1)},  # ImageNet stem
]


@pytest.mark.parametrize("toggles", DENSENET_TOGGLES, ids=lambda t: "-".join(f"{k}={v}" for k, v in t.items()))
def test_densenet_forward_backward(toggles):
    check_trains(DenseNet(num_classes=7, growth_rate=6, **toggles), size=32, num_classes=7)


def test_densenet_in_channels():
    model = DenseNet(None, block_config=(1, 1), stem="cifar", growth_rate=4, in_channels=1, num_classes=3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_memory_efficient_matches_normal_path(drop_rate):
    # Pleiss et al. 2017: recomputing in backward changes memory only: same outputs, gradients and BN running stats.
    torch.manual_seed(0)
    kwargs = {"depth": None, "block_config": (3, 3), "stem": "cifar", "growth_rate": 4, "drop_rate": drop_rate}
    normal = DenseNet(**kwargs)
    efficient = DenseNet(**kwargs, memory_efficient=True)
    efficient.load_state_dict(normal.state_dict())
    x = torch.randn(4, 3, 16, 16)
    outputs = []
    for model in (normal, efficient):
        torch.manual_seed(1)  # same dropout masks
        out = model(x)
        out.square().sum().backward()
        outputs.append(out)
    assert torch.equal(*outputs)
    for (name, a), (_, b) in zip(normal.named_parameters(), efficient.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    for (name, a), (_, b) in zip(normal.named_buffers(), efficient.named_buffers()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("toggles", "stem_width"),
    # §3 "Implementation Details": 16 channels, or 2k for DenseNet-BC; ImageNet (Table 1): 2k.
    [({"bottleneck": False, "compression": 1.0}, 16), ({}, 24), ({"bottleneck": False}, 16)],
)
def test_cifar_stem_width(toggles, stem_width):
    model = on_meta(DenseNet, depth=None, block_config=(1, 1, 1), stem="cifar", growth_rate=12, **toggles)
    assert model.features.conv0.out_channels == stem_width


def test_transition_keeps_floor_theta_m():
    # §3 "Compression": ⌊θm⌋ maps; here m = 2k + k = 15 and θ = 0.5 → 7.
    model = on_meta(DenseNet, depth=None, block_config=(1, 1), stem="cifar", growth_rate=5)
    assert model.features.transition1.conv.out_channels == 7


# ---------------------------------------------------------------- DenseNet: golden numbers

# Huang et al. 2017, Table 2 ("Params", millions as printed).
CIFAR_DENSENET_PARAMS_M = {"densenet_40_12": 1.0, "densenet_100_12": 7.0, "densenet_100_24": 27.2,
                           "densenet_bc_100_12": 0.8, "densenet_bc_250_24": 15.3, "densenet_bc_190_40": 25.6}
# torchvision.models.densenet{121,169,201}(): exact parameter counts.
TORCHVISION_DENSENET_PARAMS = {121: 7_978_856, 169: 14_149_480, 201: 20_013_928}


@pytest.mark.parametrize("preset", sorted(densenet.PRESETS))
def test_densenet_presets(preset):
    model = on_meta(DenseNet, **densenet.PRESETS[preset])
    assert model.classifier.out_features == (10 if model.stem == "cifar" else 1000)
    assert model.depth == densenet.PRESETS[preset]["depth"]
    if preset in CIFAR_DENSENET_PARAMS_M:
        assert round(num_params(model) / 1e6, 1) == CIFAR_DENSENET_PARAMS_M[preset]
    if model.stem == "imagenet" and model.depth in TORCHVISION_DENSENET_PARAMS:
        assert num_params(model) == TORCHVISION_DENSENET_PARAMS[model.depth]


def test_torchvision_densenet121_count_is_current():
    assert num_params(on_meta(torchvision.models.densenet121)) == TORCHVISION_DENSENET_PARAMS[121]


# ---------------------------------------------------------------- DenseNet: errors


@pytest.mark.parametrize(
    ("toggles", "message"),
    [
        ({"growth_rate": 0}, r"growth_rate=0 is not allowed"),
        ({"growth_rate": -4}, r"growth_rate=-4 is not allowed"),
        ({"compression": 0.0}, r"compression=0.0 is not allowed; allowed: a number in \(0, 1\]"),
        ({"compression": 1.5}, r"compression=1.5 is not allowed"),
        ({"drop_rate": 1.0}, r"drop_rate=1.0 is not allowed; allowed: a probability in \[0, 1\)"),
        ({"drop_rate": -0.1}, r"drop_rate=-0.1 is not allowed"),
        ({"depth": 122}, r"depth=122 is not an ImageNet DenseNet depth.*121, 169, 201, 264"),
        ({"depth": 121, "bottleneck": False}, r"needs bottleneck=True.*block_config=\(6, 12, 24, 16\)"),
        ({"depth": 42, "stem": "cifar"}, r"depth=42 is not 6n\+4 .*bottleneck=True; try 100, 190, 250"),
        ({"depth": 41, "stem": "cifar", "bottleneck": False}, r"depth=41 is not 3n\+4"),
        ({"depth": None}, r"depth=None needs a block_config"),
        ({"block_config": (2, 2, 2)}, r"depth=121 disagrees with block_config=\(2, 2, 2\).*depth=None"),
        ({"depth": None, "block_config": (2, 0)}, r"block_config=\(2, 0\) is not allowed"),
        ({"depth": None, "block_config": ()}, r"block_config=\(\) is not allowed"),
        ({"stem": "tiny"}, r"stem='tiny' is not allowed"),
        ({"memory_efficient": 1}, r"memory_efficient=1 is not allowed"),
    ],
)
def test_densenet_rejects_invalid_toggles(toggles, message):
    with pytest.raises(ValueError, match=message):
        DenseNet(**toggles)


def test_block_config_with_matching_depth_is_accepted():
    assert on_meta(DenseNet, depth=121, block_config=(6, 12, 24, 16)).block_config == (6, 12, 24, 16)
    # Table 1 calls (6, 12, 64, 48) DenseNet-264 although its layers count to 265.
    assert on_meta(DenseNet, depth=264, block_config=(6, 12, 64, 48)).depth == 264
