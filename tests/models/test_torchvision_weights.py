"""torchvision state dicts load into our models exactly where the configurations coincide, and nowhere else."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_depth.models import build_model
from lightning_depth.models.densenet import DenseNet
from lightning_depth.models.resnet import ResNet
from lightning_depth.models.torchvision_weights import _rename_legacy_densenet_keys, load_torchvision_weights
from lightning_depth.models.vgg import VGG

pytestmark = pytest.mark.usefixtures("one_thread")




def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# torchvision name -> (our preset, extra toggles, input size). torchvision's weights=None: random initialisation.
COINCIDING = {
    "resnet18": ("resnet18", {}, 64),
    "resnet50": ("resnet50", {"stride_in_3x3": True}, 64),
    "densenet121": ("densenet121", {}, 64),
    "vgg11": ("vgg11", {}, 32),
    "vgg11_bn": ("vgg11_bn", {}, 32),
}


@pytest.mark.parametrize("name", COINCIDING)
def test_torchvision_weights_give_torchvision_outputs(name):
    preset, toggles, size = COINCIDING[name]
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    # Our weights start uninitialised: equal outputs then also show that loading filled every tensor.
    with torch.device("meta"):
        ours = build_model(preset, **toggles)
    ours = ours.to_empty(device="cpu").eval()
    assert num_params(ours) == num_params(reference)
    assert load_torchvision_weights(ours, reference.state_dict()) is ours
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=1e-4)


def on_meta(cls, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return cls(**kwargs)


def meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    return on_meta(getattr(torchvision.models, name)).state_dict()


@pytest.mark.parametrize(
    ("model", "weights", "message"),
    [
        (lambda: ResNet(50), "resnet50",
         r"ResNet-50 with stride_in_3x3=False does not coincide with torchvision's resnet50 \(stride in the 3x3\); "
         r"build it with stride_in_3x3=True"),
        (lambda: ResNet(18, preact=True), "resnet18", r"preact=True does not coincide.*build it with preact=False"),
        (lambda: ResNet(34, shortcut="A"), "resnet34", r"shortcut='A' does not coincide.*shortcut='B'"),
        (lambda: ResNet(34, shortcut="C"), "resnet34", r"shortcut='C' does not coincide"),
        (lambda: ResNet(18, residual=False), "resnet18", r"residual=False \(plain\) does not coincide"),
        (lambda: ResNet(56, stem="cifar"), "resnet18", r"ResNet-56 has no torchvision counterpart"),
        (lambda: ResNet(200), "resnet152", r"ResNet-200 has no torchvision counterpart.*18, 34, 50, 101, 152"),
        (lambda: DenseNet(264), "densenet201", r"block_config=\(6, 12, 64, 48\) has no torchvision counterpart"),
        (lambda: DenseNet(121, growth_rate=24), "densenet121", r"growth_rate=24 does not coincide.*growth_rate=32"),
        (lambda: DenseNet(121, compression=1.0), "densenet121", r"compression=1.0 does not coincide"),
        (lambda: DenseNet(None, block_config=(6, 12, 24, 16), bottleneck=False), "densenet121",
         r"bottleneck=False does not coincide"),
        (lambda: DenseNet(None, block_config=(6, 12, 24, 16), stem="cifar"), "densenet121",
         r"stem='cifar' does not coincide"),
        (lambda: VGG(config="A-LRN"), "vgg11", r"'A-LRN' has no torchvision counterpart"),
        (lambda: VGG(config="C"), "vgg16", r"'C' \(with 1×1 convolutions\) has no torchvision counterpart"),
        (lambda: nn.Linear(2, 2), "resnet18", r"Linear has no torchvision counterpart"),
        # Configurations coincide, but the state dict is another network's or another head's.
        (lambda: ResNet(18, num_classes=10), "resnet18", r"shape mismatches: fc.weight: model \(10, 512\), state dict"),
        (lambda: ResNet(34), "resnet18", r"missing keys: layer1.2"),
        (lambda: VGG(config="A", batch_norm=True), "vgg11", r"missing keys: features.1.weight"),
    ],
)
def test_non_coinciding_configurations_are_refused(model, weights, message):
    with torch.device("meta"):
        ours = model()
    with pytest.raises(ValueError, match=message):
        load_torchvision_weights(ours, meta_state_dict(weights))


def test_legacy_densenet_checkpoint_names_are_renamed():
    # torchvision's published DenseNet checkpoints say "norm.1" where its modules (and ours) say "norm1".
    legacy = {"features.denseblock1.denselayer1.norm.1.weight": 1, "features.norm5.weight": 2}
    assert _rename_legacy_densenet_keys(legacy) == {
        "features.denseblock1.denselayer1.norm1.weight": 1,
        "features.norm5.weight": 2,
    }
