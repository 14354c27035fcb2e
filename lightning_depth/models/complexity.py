"""Per-layer output shapes, parameters and multiply-adds, to put beside the papers' tables.

Multiply-adds count convolutions and linear layers only, which is what the five papers call FLOPs
(``torch.utils.flop_counter.FlopCounterMode`` reports twice as many). Totals are the inference cost of one image:
modules that do not run in eval mode (GoogLeNet's auxiliary classifiers) add parameters but no multiply-adds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from lightning_depth import fmt
from lightning_depth.models.alexnet import AlexNet

# Parameter-free layers that keep the shape: a row each would only lengthen the table.
_QUIET = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Flatten,
          nn.modules.dropout._DropoutNd)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)  # the layers whose multiply-adds the papers count


@dataclass
class LayerRow:
    """One row of the table: a module, its output for one image, and the cost of everything inside it."""

    name: str
    type: str
    output_shape: list[int] | None  # per image (no batch dimension); None when the module did not run
    params: int
    macs: int


@dataclass
class ModelSummary:
    """Totals and rows of one forward pass; ``macs`` is the inference cost of one image."""

    model: str
    input_size: tuple[int, int]
    in_channels: int
    params: int
    macs: int
    layers: list[LayerRow]
    module_macs: dict[str, int] = field(default_factory=dict, repr=False)  # per convolution / linear layer

    def macs_of(self, prefix: str) -> int:
        """Multiply-adds of the module named ``prefix`` (e.g. ``"inception3a"``) and everything inside it;
        ``""`` is the whole model."""
        inside = (lambda name: True) if not prefix else (lambda name: name == prefix or name.startswith(prefix + "."))
        return sum(m for name, m in self.module_macs.items() if inside(name))

    def line(self) -> str:
        """One line with the totals, as the CLI prints it before training and the summary table ends."""
        h, w = self.input_size
        return (f"{self.model}: params {fmt.count(self.params)}, multiply-adds {fmt.count(self.macs)}"
                f" (inference, one {self.in_channels}x{h}x{w} image)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "in_channels": self.in_channels,
            "params": self.params,
            "macs": self.macs,
            "layers": [asdict(row) for row in self.layers],
        }


class InputSizeError(ValueError):
    """The model does not run on the requested input (too small, or a fixed-size classifier that does not fit)."""


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        # Each output element takes (in_channels / groups) * kernel area multiply-adds; bias adds are not counted.
        return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return output.numel() * module.in_features


def _has_children(module: nn.Module) -> bool:
    return next(module.children(), None) is not None


def _computes(module: nn.Module) -> bool:
    return any(isinstance(m, _COUNTED) for m in module.modules())


def _expand_auto(module: nn.Module) -> bool:
    """Open plain containers that hold a sequence of layers (VGG's ``features``) or only other containers (a list
    of stages), but keep as one row a conv + ReLU unit, a stage of residual blocks or a dense block: those are the
    rows of the papers' tables."""
    if type(module) not in _CONTAINERS or not _has_children(module):
        return False
    kids = list(module.children())
    if all(type(k) in _CONTAINERS for k in kids):
        return True
    return any(not _has_children(k) for k in kids) and sum(map(_computes, kids)) > 1


def _row_modules(model: nn.Module, depth: int | None) -> list[tuple[str, nn.Module]]:
    rows: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module, level: int) -> None:
        for name, child in module.named_children():
            qualified = f"{prefix}.{name}" if prefix else name
            expand = _expand_auto(child) if depth is None else (_has_children(child) and level < depth)
            if expand:
                visit(qualified, child, level + 1)
            elif not (isinstance(child, _QUIET) and not _has_children(child)):
                rows.append((qualified, child))

    visit("", model, 1)
    return rows or [("", model)]  # a model without children is its own single row


def _shape(output: Any) -> list[int] | None:
    if isinstance(output, torch.Tensor):
        return list(output.shape[1:])
    if isinstance(output, (tuple, list)) and output:
        return _shape(output[0])
    return None


def _run(model: nn.Module, x: torch.Tensor, meta: bool) -> None:
    if meta:
        # Shapes only, in no time and no memory; parameters and buffers are swapped for meta tensors, not copied.
        tensors = chain(model.named_parameters(), model.named_buffers())
        state = {n: torch.empty_like(t, device="meta") for n, t in tensors}
        functional_call(model, state, (x.to("meta"),))
    else:
        model(x.to(next(chain(model.parameters(), model.buffers()), x).device))


def _trace(
    model: nn.Module, x: torch.Tensor, rows: list[tuple[str, nn.Module]], label: str
) -> tuple[dict[str, int], dict[str, list[int] | None]]:
    """Multiply-adds per convolution / linear layer and the output shape of each row, from one forward pass."""
    names = {m: n for n, m in reversed(list(model.named_modules()))}  # the first name of a shared module wins
    module_macs: dict[str, int] = {}
    outputs: dict[str, list[int] | None] = {}

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        module_macs[names[module]] = module_macs.get(names[module], 0) + _macs(module, output)

    def record(row: str) -> Any:
        return lambda module, inputs, output: outputs.__setitem__(row, _shape(output))

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, _COUNTED)]
    handles += [m.register_forward_hook(record(n)) for n, m in rows]
    try:
        # Meta first; a model that makes tensors of its own on a fixed device runs again on real ones, which also
        # gives the authoritative error.
        for meta in (True, False):
            module_macs.clear()
            outputs.clear()
            try:
                with torch.no_grad():
                    _run(model, x, meta)
                return module_macs, outputs
            except Exception as err:  # any meta failure is retried; the real run re-raises what is not a shape error
                if meta:
                    continue
                if not isinstance(err, RuntimeError):
                    raise
                first = (str(err).strip() or type(err).__name__).splitlines()[0]
                _, c, h, w = x.shape
                raise InputSizeError(f"{label} does not run on a {c}x{h}x{w} input: {first}") from err
    finally:
        for handle in handles:
            handle.remove()
    raise AssertionError("unreachable")


def profile_model(
    model: nn.Module,
    input_size: int | tuple[int, int],
    in_channels: int = 3,
    depth: int | None = None,
    name: str | None = None,
) -> ModelSummary:
    """Run one image through ``model`` in eval mode and tabulate output shapes, parameters and multiply-adds.

    Args:
        model: any module; every submodule is left in the train/eval mode it came in.
        input_size: image side, or (height, width).
        in_channels: image channels.
        depth: module nesting level of the rows (1 = the model's children); None picks the papers' granularity.
        name: what to call the model in the summary (default: its class name).
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if depth is not None and depth < 1:
        raise ValueError(f"depth={depth} must be at least 1")
    label = name or type(model).__name__
    rows = _row_modules(model, depth)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        module_macs, outputs = _trace(model, torch.zeros(1, in_channels, *size), rows, label)
    finally:
        for module, training in modes.items():
            module.training = training
    summary = ModelSummary(
        model=label,
        input_size=size,
        in_channels=in_channels,
        params=sum(p.numel() for p in model.parameters()),
        macs=sum(module_macs.values()),
        layers=[],
        module_macs=module_macs,
    )
    summary.layers = [
        LayerRow(n, type(m).__name__, outputs.get(n), sum(p.numel() for p in m.parameters()), summary.macs_of(n))
        for n, m in rows
    ]
    return summary


def paper_input_size(cls: type[nn.Module], toggles: dict[str, Any]) -> int:
    """The input side the paper used: 227 for AlexNet (55x55 after conv1 needs it), 32 for CIFAR stems, else 224."""
    if issubclass(cls, AlexNet):
        return 227
    return 32 if toggles.get("stem") == "cifar" else 224


def smallest_input_size(model: nn.Module, works_at: int, in_channels: int = 3) -> int:
    """The smallest square side below ``works_at`` (a size known to run) on which ``model`` runs, by bisection."""
    lo, hi = 0, works_at  # fails at lo (or lo == 0), runs at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            profile_model(model, mid, in_channels)
            hi = mid
        except InputSizeError:
            lo = mid
    return hi


def format_table(summary: ModelSummary) -> str:
    """Aligned plain text (no colour codes, so it reads the same in a file), counts in the papers' units."""
    header = ("layer", "type", "output", "params", "multiply-adds")
    body = [
        (
            r.name,
            r.type,
            "x".join(map(str, r.output_shape)) if r.output_shape is not None else "-",
            fmt.count(r.params),
            fmt.count(r.macs),
        )
        for r in summary.layers
    ]
    lines = fmt.table(header, body, right=(3, 4))
    out = [*lines, lines[1]]  # the rule under the header closes the table too
    if any(r.output_shape is None for r in summary.layers):
        out.append("- : not run in eval mode (e.g. auxiliary classifiers): parameters counted, multiply-adds not")
    out.append(summary.line())
    return "\n".join(out)
