"""ImageClassifier reads every network through one output contract and weights GoogLeNet's side losses as §5 does."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from lightning_depth.models import GoogLeNet, ResNet
from lightning_depth.module import ImageClassifier

NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def no_trainer_warnings():
    # training_step logs; without a Trainer, Lightning warns and drops the value.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        yield


def test_googlenet_loss_adds_each_aux_loss_with_weight_0_3() -> None:
    # Szegedy et al. 2015, §5: "their loss gets added to the total loss of the network with a discount weight (the
    # losses of the auxiliary classifiers were weighted by 0.3)".
    net = GoogLeNet(num_classes=NUM_CLASSES)
    module = ImageClassifier(net).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    torch.manual_seed(0)  # the same dropout masks in both passes
    loss = module.training_step((x, y), 0)
    torch.manual_seed(0)
    logits, aux = net(x)
    expected = F.cross_entropy(logits, y) + 0.3 * sum(F.cross_entropy(a, y) for a in aux)
    assert len(aux) == 2 and torch.allclose(loss, expected)


@pytest.mark.parametrize(
    "build",
    [lambda: GoogLeNet(num_classes=NUM_CLASSES), lambda: ResNet(depth=8, stem="cifar", num_classes=NUM_CLASSES)],
    ids=["googlenet", "resnet8"],
)
def test_eval_forward_is_logits_for_every_network(build) -> None:
    module = ImageClassifier(build()).eval()
    with torch.no_grad():
        assert module(torch.randn(2, 3, 32, 32)).shape == (2, NUM_CLASSES)
        assert module(torch.randn(2, 10, 3, 32, 32)).shape == (2, NUM_CLASSES)  # ten-crop: averaged over crops
