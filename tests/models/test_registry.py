"""The registry's contract, for every registered family and preset: it builds, runs, learns, and says what is wrong."""

from __future__ import annotations

import inspect
import typing

import pytest
import torch
import torch.nn.functional as F
from jsonargparse import ArgumentParser
from torch import nn

from lightning_depth.models.layers import logits_and_aux
from lightning_depth.models.registry import FAMILIES, PRESETS, build_model, list_models, resolve

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = list_models()

# Real weights plus a backward pass take well over 2 s on a 2-core CPU for these: initialising > 40 M weights (VGG,
# AlexNet, the ImageNet ResNets from 101 layers, DenseNet-169 and up, the wide CIFAR DenseNets) or running > 500
# layers (ResNet-1001/1202). Their constructors are still checked by the fast tests below.
SLOW = {
    "alexnet",
    "vgg", "vgg11", "vgg11_bn", "vgg11_lrn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg16_conv1", "vgg19",
    "vgg19_bn",
    "resnet101", "resnet152", "resnet200", "preact_resnet152", "preact_resnet200",
    "resnet1001", "resnet1202", "preact_resnet1001",
    "densenet169", "densenet201", "densenet264", "densenet_100_24", "densenet_bc_190_40", "densenet_bc_250_24",
}


def family_of(name: str) -> str:
    return name if name in FAMILIES else PRESETS[name][0]


def required_toggles(name: str) -> dict[str, typing.Any]:
    """A family whose constructor has required arguments (ResNet's depth) takes them from its first preset."""
    if name not in FAMILIES:
        return {}
    params = inspect.signature(FAMILIES[name].__init__).parameters.values()
    required = [p.name for p in params if p.default is inspect.Parameter.empty and p.name != "self"]
    first_preset = next((toggles for family, toggles in PRESETS.values() if family == name), {})
    return {k: first_preset[k] for k in required}


def small_side(name: str) -> int:
    """About the smallest input each network takes: AlexNet's three overlapping pools need 67 (its own note); an
    ImageNet stem and four stages (or GoogLeNet's five pools) bring 32 down to 1×1, and DenseNet's last transition
    pools 2×2 there; a CIFAR stem downsamples twice, 8 → 2×2."""
    family, toggles = family_of(name), resolve(name, **required_toggles(name))[1]
    if family == "alexnet":
        return 67
    return 8 if toggles.get("stem") == "cifar" else 32




def slow_if_heavy(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


# ------------------------------------------------------------------------------------------------ every model

@pytest.mark.parametrize("name", NAMES)
def test_resolves_to_a_family_and_its_signature(name):
    cls, kwargs = resolve(name, **required_toggles(name))
    assert cls is FAMILIES[family_of(name)]
    inspect.signature(cls).bind(**kwargs)  # every preset toggle is a constructor argument


@pytest.mark.parametrize("name", slow_if_heavy(NAMES))
def test_forward_shape_and_gradient_on_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name, **required_toggles(name))
    num_classes = resolve(name, **required_toggles(name))[1].get("num_classes", 1000)
    in_channels = resolve(name, **required_toggles(name))[1].get("in_channels", 3)
    # Batch 2: BatchNorm in training mode needs more than one value per channel on the 1×1 maps of the last stage.
    x = torch.randn(2, in_channels, small_side(name), small_side(name))

    model.train()
    trained = model(x)
    logits, aux = logits_and_aux(trained)
    outputs = [logits, *aux]  # the auxiliary logits too (GoogLeNet's), so their heads get gradients
    target = torch.randint(num_classes, (2,))
    loss = sum(F.cross_entropy(out, target) for out in outputs)
    assert all(out.shape == (2, num_classes) for out in outputs) and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reaches {missing[:5]}"
    not_finite = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradient in {not_finite[:5]}"

    # Eval mode gives logits and no auxiliary logits, in the same type as in training. Only their shape is checked:
    # an untrained network normalises with BatchNorm's initial running statistics (mean 0, variance 1), under which
    # the residual sum of ResNet-1001/1202 overflows.
    model.eval()
    with torch.no_grad():
        evaluated = model(x)
    logits, aux = logits_and_aux(evaluated)
    assert type(evaluated) is type(trained) and logits.shape == (2, num_classes) and aux == ()


DEEPEST = {"resnet1001", "resnet1202", "preact_resnet1001"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEPEST else n for n in sorted(SLOW)])
def test_heavy_models_build_on_meta(name):
    """The constructors of the models whose forward test is slow, without initialising their weights."""
    with torch.device("meta"):
        model = build_model(name, **required_toggles(name))
    assert sum(p.numel() for p in model.parameters()) > 0


# ------------------------------------------------------------------------------------------------ errors

def test_unknown_name_lists_every_valid_name():
    with pytest.raises(ValueError, match="unknown model 'resnet51'") as err:
        build_model("resnet51")
    assert all(name in str(err.value) for name in NAMES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unknown_toggle_is_named_with_the_valid_ones(family):
    with pytest.raises(ValueError, match="unknown toggle.*no_such_toggle") as err:
        build_model(family, no_such_toggle=1, **required_toggles(family))
    valid = [p for p in inspect.signature(FAMILIES[family].__init__).parameters if p != "self"]
    assert all(p in str(err.value) for p in valid)


# One value each family's constructor must refuse, naming the argument (STYLE: invalid combinations fail in __init__).
BAD_VALUES = {
    "alexnet": {"norm": "batchnorm"},
    "vgg": {"config": "F"},
    "googlenet": {"inception": "v3"},
    "resnet": {"depth": 21, "stem": "cifar"},
    "densenet": {"depth": 41, "stem": "cifar", "bottleneck": False},
}


@pytest.mark.parametrize("family", sorted(BAD_VALUES))
def test_bad_value_fails_in_init_naming_the_argument(family):
    toggles = {**required_toggles(family), **BAD_VALUES[family]}
    with pytest.raises(ValueError, match=next(iter(BAD_VALUES[family]))), torch.device("meta"):
        build_model(family, **toggles)


@pytest.mark.parametrize("family", [f for f in sorted(FAMILIES) if required_toggles(f)])
def test_required_toggles_are_named_when_missing(family):
    with pytest.raises(TypeError, match=next(iter(required_toggles(family)))):
        build_model(family)


# ------------------------------------------------------------------------------------------------ toggles

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_toggles_override_a_preset(name):
    family, preset = PRESETS[name]
    cls, kwargs = resolve(name, num_classes=7)
    assert kwargs == {**preset, "num_classes": 7}
    assert PRESETS[name] == (family, preset)  # the preset itself is left alone


def test_overridden_preset_builds_with_the_rest_of_the_preset():
    model = build_model("resnet20", num_classes=7, preact=True)
    assert model.fc.out_features == 7 and model.preact and model.stem == "cifar"  # stem still from the preset
    with torch.device("meta"):
        assert build_model("resnet50", stride_in_3x3=True).stride_in_3x3


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_toggle_is_typed_for_jsonargparse(family):
    cls = FAMILIES[family]
    hints = typing.get_type_hints(cls.__init__)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert [p for p in params if p not in hints] == []
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "model", fail_untyped=True)
    defaults = parser.get_defaults().model
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name != "self" and p.default is not inspect.Parameter.empty:
            assert defaults[p.name] == p.default, p.name


def test_list_models_is_families_and_presets():
    assert NAMES == sorted(set(FAMILIES) | set(PRESETS))
    assert all(issubclass(cls, nn.Module) for cls in FAMILIES.values())
