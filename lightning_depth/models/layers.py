"""Small pieces shared by the families: the output contract, the papers' local response normalisation, argument
checks, initialisations."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from torch import Tensor, nn


class ClassifierOutput(NamedTuple):
    """What a network with side classifiers returns in every mode: the logits and the side heads' logits.

    ``aux`` holds one tensor per auxiliary classifier while training and is empty in eval mode or when the network
    has none (GoogLeNet §5 discards the heads at inference).
    """

    logits: Tensor
    aux: tuple[Tensor, ...] = ()


def logits_and_aux(output: Tensor | ClassifierOutput) -> ClassifierOutput:
    """Any network's output as (logits, auxiliary logits): a plain logits tensor has no auxiliary logits."""
    return ClassifierOutput(output) if isinstance(output, Tensor) else output


class LRN(nn.LocalResponseNorm):
    """Local response normalisation written with the paper's constants (Krizhevsky et al. 2012, §3.3).

    Args:
        size: number of adjacent channels n summed over.
        alpha: the paper's α, the weight of each squared activity in the sum.
        beta: the exponent β.
        k: the additive constant k.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        # The paper computes a / (k + α Σ a²)^β; PyTorch computes a / (k + (α'/n) Σ a²)^β, so α' = α·n.
        # With the paper's constants this is nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0).
        super().__init__(size, alpha=alpha * size, beta=beta, k=k)
        self.paper_alpha = alpha

    def extra_repr(self) -> str:
        return f"{self.size}, paper_alpha={self.paper_alpha}, beta={self.beta}, k={self.k}"


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise a ValueError naming the argument, its value and the allowed values unless ``value`` is one of them."""
    allowed = tuple(allowed)
    # Compare types too, so that True is not taken for 1 (groups=True) nor 1.0 for 1.
    if not any(value == a and type(value) is type(a) for a in allowed):
        raise ValueError(f"{name}={value!r} is not allowed; allowed: {', '.join(repr(a) for a in allowed)}")


def check_probability(name: str, value: float) -> None:
    """Raise a ValueError unless ``value`` is a dropout probability in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a probability in [0, 1)")


def check_positive_int(name: str, value: int) -> None:
    """Raise a ValueError unless ``value`` is an integer of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")


def init_normal_(module: nn.Module, std: float, bias: float = 0.0) -> None:
    """Draw every convolution and linear weight from N(0, std²) and set every bias to ``bias``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)


def init_xavier_(module: nn.Module) -> None:
    """Glorot & Bengio (2010) uniform weights for every convolution and linear layer, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_kaiming_(module: nn.Module) -> None:
    """He et al. (2015b) normal weights (fan_out, ReLU gain) for every convolution, BatchNorm weight 1 and bias 0, and
    zero linear biases (linear weights keep PyTorch's default), as the authors' Torch code does.

    A module built on the meta device is left as it is: there are no values to draw.
    """
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
