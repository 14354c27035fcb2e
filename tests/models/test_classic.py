"""AlexNet, VGG and GoogLeNet: shapes, gradients, the papers' numbers, and the toggles they refuse."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_depth.models import alexnet, googlenet, vgg
from lightning_depth.models.alexnet import AlexNet
from lightning_depth.models.googlenet import INCEPTION_ROWS, GoogLeNet
from lightning_depth.models.layers import LRN, ClassifierOutput, logits_and_aux
from lightning_depth.models.vgg import VGG

NUM_CLASSES = 10
# Small inputs keep the CPU tests fast: 67 is the smallest AlexNet's overlapping pools accept; VGG and GoogLeNet
# take CIFAR-sized images.
INPUT_SIZE = {AlexNet: 67, VGG: 32, GoogLeNet: 32}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(cls: type[nn.Module], **kwargs) -> nn.Module:
    """Build on the meta device: shapes and parameter counts without allocating or initialising weights."""
    with torch.device("meta"):
        return cls(**kwargs)


@pytest.fixture
def narrow_classifiers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the 4096-wide hidden FC layers of AlexNet and VGG to 64 so a forward and backward pass takes
    milliseconds; their full widths are checked by the parameter counts below."""
    monkeypatch.setattr(alexnet, "HIDDEN", 64)
    monkeypatch.setattr(vgg, "HIDDEN", 64)


def assert_trains(model: nn.Module, size: int, in_channels: int = 3) -> None:
    """Training-mode forward and backward: logits of the right shape, finite, and a gradient on every parameter."""
    torch.manual_seed(0)
    model.train()
    logits, aux = logits_and_aux(model(torch.randn(2, in_channels, size, size)))
    outputs = [logits, *aux]
    for logits in outputs:
        assert logits.shape == (2, NUM_CLASSES)
        assert torch.isfinite(logits).all()
    sum(logits.sum() for logits in outputs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient in {name}"


# --- every preset and every toggle builds, runs forward and backward -------------------------------------------

PRESET_CASES = [
    pytest.param(cls, kwargs, id=name)
    for cls, module in ((AlexNet, alexnet), (VGG, vgg), (GoogLeNet, googlenet))
    for name, kwargs in module.PRESETS.items()
]
TOGGLE_CASES = [
    pytest.param(AlexNet, {"norm": "batch"}, id="alexnet-norm=batch"),
    pytest.param(AlexNet, {"norm": "none"}, id="alexnet-norm=none"),
    pytest.param(AlexNet, {"groups": 1}, id="alexnet-groups=1"),
    pytest.param(AlexNet, {"activation": "tanh"}, id="alexnet-activation=tanh"),
    pytest.param(AlexNet, {"overlapping_pool": False}, id="alexnet-overlapping_pool=False"),
    pytest.param(AlexNet, {"dropout": 0.0}, id="alexnet-dropout=0"),
    pytest.param(VGG, {"config": "C", "batch_norm": True}, id="vgg-config=C-batch_norm"),
    pytest.param(VGG, {"config": "A-LRN", "batch_norm": True}, id="vgg-config=A-LRN-batch_norm"),
    pytest.param(GoogLeNet, {"aux_classifiers": False}, id="googlenet-aux_classifiers=False"),
    pytest.param(GoogLeNet, {"inception": "naive"}, id="googlenet-inception=naive"),
    pytest.param(GoogLeNet, {"lrn": False}, id="googlenet-lrn=False"),
    pytest.param(GoogLeNet, {"batch_norm": True}, id="googlenet-batch_norm"),
]


@pytest.mark.parametrize(("cls", "kwargs"), PRESET_CASES + TOGGLE_CASES)
@pytest.mark.usefixtures("narrow_classifiers")
def test_forward_backward(cls: type[nn.Module], kwargs: dict) -> None:
    assert_trains(cls(num_classes=NUM_CLASSES, **kwargs), INPUT_SIZE[cls])


@pytest.mark.parametrize("cls", [AlexNet, VGG, GoogLeNet])
@pytest.mark.usefixtures("narrow_classifiers")
def test_in_channels(cls: type[nn.Module]) -> None:
    assert_trains(cls(num_classes=NUM_CLASSES, in_channels=1), INPUT_SIZE[cls], in_channels=1)


# --- output contract --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aux_classifiers", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_googlenet_returns_the_same_type_in_every_mode(aux_classifiers: bool, training: bool) -> None:
    model = GoogLeNet(num_classes=NUM_CLASSES, aux_classifiers=aux_classifiers).train(training)
    out = model(torch.randn(2, 3, 32, 32))
    assert type(out) is ClassifierOutput and type(out.aux) is tuple
    assert out.logits.shape == (2, NUM_CLASSES)


def test_googlenet_aux_logits_exist_only_in_training_with_aux_classifiers() -> None:
    # §5: two auxiliary classifiers during training, discarded at inference.
    x = torch.randn(2, 3, 32, 32)
    model = GoogLeNet(num_classes=NUM_CLASSES)
    assert [a.shape for a in model.train()(x).aux] == [(2, NUM_CLASSES), (2, NUM_CLASSES)]
    assert model.eval()(x).aux == ()
    no_aux = GoogLeNet(num_classes=NUM_CLASSES, aux_classifiers=False)
    assert no_aux.train()(x).aux == ()
    assert no_aux.aux1 is None and no_aux.aux2 is None


def test_gradient_reaches_the_aux_heads_in_training() -> None:
    model = GoogLeNet(num_classes=NUM_CLASSES).train()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    sum(a.sum() for a in aux).backward()
    for head in (model.aux1, model.aux2):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert model.fc.weight.grad is None  # the main classifier sits after both heads


def test_any_output_reads_as_logits_and_aux() -> None:
    logits = torch.randn(2, NUM_CLASSES)
    plain = logits_and_aux(logits)
    assert type(plain) is ClassifierOutput and plain.logits is logits and plain.aux == ()
    with_aux = ClassifierOutput(logits, (logits + 1,))
    assert logits_and_aux(with_aux) is with_aux


def test_googlenet_aux_heads_sit_on_4a_and_4d() -> None:
    # §5: auxiliary classifiers on the outputs of 4a (512 channels) and 4d (528 channels).
    model = on_meta(GoogLeNet)
    assert model.aux1.conv[0].in_channels == 512
    assert model.aux2.conv[0].in_channels == 528
    assert model.aux1.dropout.p == 0.7 and model.aux1.fc1.out_features == 1024


# --- paper geometry ----------------------------------------------------------------------------------------------


def test_alexnet_227_input_gives_55_then_6() -> None:
    # Figure 2's 55×55 maps after conv1 need a 227×227 input: (227 − 11) / 4 + 1 = 55 (224 gives 54.25).
    model = on_meta(AlexNet)
    x = torch.zeros(1, 3, 227, 227, device="meta")
    assert model.features[0](x).shape == (1, 96, 55, 55)
    for overlapping in (True, False):  # §3.4: both pooling schemes give outputs of the same size
        assert on_meta(AlexNet, overlapping_pool=overlapping).features(x).shape == (1, 256, 6, 6)


def test_adaptive_pools_are_the_identity_at_paper_sizes() -> None:
    x6, x7 = torch.randn(1, 256, 6, 6), torch.randn(1, 512, 7, 7)
    assert torch.equal(on_meta(AlexNet).avgpool(x6), x6)
    assert torch.equal(on_meta(VGG).avgpool(x7), x7)
    # GoogLeNet's aux pool at 224 (14×14 maps) is §5's 5×5 average pool with stride 3.
    head = googlenet.AuxClassifier(512, NUM_CLASSES).eval()
    x14 = torch.randn(1, 512, 14, 14)
    pooled = nn.AvgPool2d(5, stride=3)(x14)
    expected = head.fc2(torch.relu(head.fc1(torch.flatten(head.conv(pooled), 1))))
    assert torch.allclose(head(x14), expected, atol=1e-6)


def test_vgg_224_input_gives_7x7() -> None:
    for config in vgg.CONFIGS:
        out = on_meta(VGG, config=config).features(torch.zeros(1, 3, 224, 224, device="meta"))
        assert out.shape == (1, 512, 7, 7)


def test_lrn_uses_the_papers_alpha() -> None:
    # Krizhevsky et al. §3.3: b = a / (k + α Σ a²)^β over n = 5 neighbouring channels, k = 2, α = 1e-4, β = 0.75.
    a = torch.randn(2, 8, 3, 3) * 10
    padded = nn.functional.pad(a.pow(2), (0, 0, 0, 0, 2, 2))
    window_sum = sum(padded[:, i : i + 8] for i in range(5))
    expected = a / (2.0 + 1e-4 * window_sum) ** 0.75
    assert torch.allclose(LRN()(a), expected, rtol=1e-5)
    assert torch.allclose(LRN()(a), nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a))


def test_alexnet_groups_follow_the_two_gpu_layout() -> None:
    # §3.2: conv2, conv4 and conv5 read only their own GPU's maps; conv1 and conv3 read all of them.
    convs = [m for m in on_meta(AlexNet).features if isinstance(m, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]


@pytest.mark.usefixtures("narrow_classifiers")
def test_alexnet_initialisation_follows_section_5() -> None:
    # §5: weights N(0, 0.01²); biases 1 in conv2, conv4, conv5 and the two hidden FC layers, 0 elsewhere.
    model = AlexNet()
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [m.bias[0].item() for m in layers] == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert layers[5].weight.std().item() == pytest.approx(0.01, rel=0.01)


# --- golden parameter counts --------------------------------------------------------------------------------------

# Simonyan & Zisserman (2015), Table 2, "Number of parameters (in millions)".
VGG_TABLE2_MILLIONS = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


@pytest.mark.parametrize(("config", "millions"), VGG_TABLE2_MILLIONS.items())
def test_vgg_parameters_match_table_2(config: str, millions: int) -> None:
    assert round(n_params(on_meta(VGG, config=config)) / 1e6) == millions


@pytest.mark.parametrize(
    "preset", ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
)
def test_vgg_matches_torchvision_state_dict(preset: str) -> None:
    # torchvision's vgg11/13/16/19 are configurations A/B/D/E: same keys, same shapes, same parameter count
    # (e.g. vgg16 138,357,544; vgg16_bn 138,365,992).
    ours = on_meta(VGG, **vgg.PRESETS[preset])
    with torch.device("meta"):
        theirs = getattr(torchvision.models, preset)(weights=None)
    assert n_params(ours) == n_params(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_alexnet_has_60_million_parameters() -> None:
    # Krizhevsky et al. (2012) abstract: "60 million parameters". Two-GPU layout, exactly:
    # conv 34,944 + 307,456 + 885,120 + 663,936 + 442,624; FC 37,752,832 + 16,781,312 + 4,097,000.
    count = n_params(on_meta(AlexNet))
    assert count == 60_965_224
    assert count == pytest.approx(60e6, rel=0.02)
    # Without groups conv2, conv4 and conv5 see all maps of the previous layer: 1,413,120 more weights.
    assert n_params(on_meta(AlexNet, groups=1)) == 62_378_344


# --- GoogLeNet, Table 1 -------------------------------------------------------------------------------------------

# Szegedy et al. (2015), Table 1: output channels and ops (multiply-adds, millions) per inception row at 224×224.
GOOGLENET_TABLE1 = {
    "3a": (256, 128), "3b": (480, 304),
    "4a": (512, 73), "4b": (512, 88), "4c": (512, 100), "4d": (528, 119), "4e": (832, 170),
    "5a": (832, 54), "5b": (1024, 71),
}  # fmt: skip


def multiply_adds(model: nn.Module, size: int = 224) -> dict[str, int]:
    """Multiply-adds of convolutions and linear layers per top-level child, counted by forward hooks on meta tensors."""
    counts: dict[str, int] = {}

    def hook(child: str):
        def count(m: nn.Module, inputs, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                per_output = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                macs = out[0].numel() * per_output
            else:
                macs = out[0].numel() * m.in_features
            counts[child] = counts.get(child, 0) + macs

        return count

    handles = [
        m.register_forward_hook(hook(name.split(".")[0]))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    model.eval()(torch.zeros(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return counts


def test_googlenet_ops_match_table_1() -> None:
    ops = multiply_adds(on_meta(GoogLeNet))
    for row, (_, millions) in GOOGLENET_TABLE1.items():
        measured = ops[f"inception{row}"] / 1e6
        if row == "5a":
            # Table 1's 5a ops do not follow from its own widths (256, 160, 320, 32, 128, 128 on 832 channels at
            # 7×7 give 51.08M, not 54M); we build the printed widths.
            assert measured == pytest.approx(51.08, abs=0.01)
        else:
            assert measured == pytest.approx(millions, rel=0.03), row
    # The stem's 1×1 + 3×3 row (360M) and the final linear layer (1M) agree with Table 1; its conv1 row (34M)
    # does not: a 7×7 convolution from 3 to 64 channels on 112×112 outputs costs 118M.
    assert (ops["conv2"] + ops["conv3"]) / 1e6 == pytest.approx(360, rel=0.01)
    assert ops["fc"] / 1e6 == pytest.approx(1, rel=0.03)
    assert ops["conv1"] / 1e6 == pytest.approx(118.01, abs=0.01)


def test_googlenet_widths_match_table_1() -> None:
    model = on_meta(GoogLeNet)
    assert {row: getattr(model, f"inception{row}").out_channels for row in INCEPTION_ROWS} == {
        row: channels for row, (channels, _) in GOOGLENET_TABLE1.items()
    }
    assert model.inception3a.branch3[1][0].kernel_size == (5, 5)  # a real 5×5, unlike torchvision's 3×3


def test_googlenet_naive_module_grows_the_width() -> None:
    # §4 / Figure 2 (a): without reductions the pooled input is concatenated as is: 3a gives 64 + 128 + 32 + 192.
    model = on_meta(GoogLeNet, inception="naive")
    assert model.inception3a.out_channels == 416


# --- refused toggles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (AlexNet, {"groups": 3}, "groups=3 is not allowed; allowed: 1, 2"),
        (AlexNet, {"groups": True}, "groups=True is not allowed; allowed: 1, 2"),
        (AlexNet, {"norm": "foo"}, "norm='foo' is not allowed; allowed: 'lrn', 'batch', 'none'"),
        (AlexNet, {"activation": "gelu"}, "activation='gelu' is not allowed; allowed: 'relu', 'tanh'"),
        (AlexNet, {"dropout": 1.0}, r"dropout=1.0 is not allowed; allowed: a probability in \[0, 1\)"),
        (AlexNet, {"num_classes": 0}, "num_classes=0 is not allowed; allowed: an integer >= 1"),
        (VGG, {"config": "F"}, "config='F' is not allowed; allowed: 'A', 'A-LRN', 'B', 'C', 'D', 'E'"),
        (VGG, {"dropout": -0.1}, r"dropout=-0.1 is not allowed"),
        (VGG, {"batch_norm": "yes"}, "batch_norm='yes' is not allowed; allowed: True, False"),
        (VGG, {"in_channels": 0}, "in_channels=0 is not allowed"),
        (GoogLeNet, {"inception": "v3"}, "inception='v3' is not allowed; allowed: 'reduced', 'naive'"),
        (GoogLeNet, {"dropout": 1.5}, r"dropout=1.5 is not allowed"),
        (GoogLeNet, {"aux_classifiers": 1}, "aux_classifiers=1 is not allowed; allowed: True, False"),
    ],
)
def test_invalid_toggles_are_refused(cls: type[nn.Module], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
