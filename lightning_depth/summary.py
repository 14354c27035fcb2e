"""Per-layer output shapes, parameters and multiply-adds, to put beside the papers' tables.

Multiply-adds count convolutions and linear layers only, which is what the five papers call FLOPs
(``torch.utils.flop_counter.FlopCounterMode`` reports twice as many). Totals are the inference cost of one image:
modules that do not run in eval mode (GoogLeNet's auxiliary classifiers) add parameters but no multiply-adds.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import Any

import torch
from jsonargparse import ArgumentParser
from torch import nn
from torch.func import functional_call

from lightning_depth.errors import UsageError
from lightning_depth.models.registry import FAMILIES, resolve

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
        state = {n: torch.empty_like(t, device="meta") for n, t in chain(model.named_parameters(), model.named_buffers())}
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


def summarize(
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


def smallest_input_size(model: nn.Module, works_at: int, in_channels: int = 3) -> int:
    """The smallest square side below ``works_at`` (a size known to run) on which ``model`` runs, by bisection."""
    lo, hi = 0, works_at  # fails at lo (or lo == 0), runs at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            summarize(model, mid, in_channels)
            hi = mid
        except InputSizeError:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------- formatting


def _human(n: int) -> str:
    """Papers' units: 0.27 M parameters (ResNet-20), 3.8 G multiply-adds (ResNet-50)."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} G"
    if n >= 1e5:
        return f"{n / 1e6:.2f} M"
    return f"{n / 1e3:.2f} K" if n >= 1e3 else str(n)


def format_table(summary: ModelSummary) -> str:
    """Aligned plain text (no colour codes, so it reads the same in a file)."""
    header = ("layer", "type", "output", "params", "multiply-adds")
    body = [
        (
            r.name,
            r.type,
            "x".join(map(str, r.output_shape)) if r.output_shape is not None else "-",
            f"{r.params:,}",
            _human(r.macs) if r.macs else "0",
        )
        for r in summary.layers
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells):
        left = [c.ljust(w) for c, w in zip(cells[:3], widths[:3])]
        right = [c.rjust(w) for c, w in zip(cells[3:], widths[3:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(line(header))
    h, w = summary.input_size
    out = [line(header), rule, *map(line, body), rule]
    if any(r.output_shape is None for r in summary.layers):
        out.append("- : not run in eval mode (e.g. auxiliary classifiers): parameters counted, multiply-adds not")
    out.append(
        f"{summary.model}: params {_human(summary.params)}, multiply-adds {_human(summary.macs)}"
        f" (inference, one {summary.in_channels}x{h}x{w} image)"
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- command line

_OWN_OPTIONS = ("input_size", "format", "expand", "help")
_USAGE = (
    "usage: lightning_depth summary NAME [--TOGGLE VALUE ...] [--input-size N|HxW] [--format table|json] [--expand N]\n"
    "  NAME: a family or preset (see lightning_depth.models.list_models()); toggles are the family's constructor\n"
    "  arguments (--preact true, --growth-rate 12); `summary NAME --help` lists them."
)


def paper_input_size(cls: type[nn.Module], toggles: dict[str, Any]) -> int:
    """The input side the paper used: 227 for AlexNet (55x55 after conv1 needs it), 32 for CIFAR stems, else 224."""
    if cls is FAMILIES["alexnet"]:
        return 227
    return 32 if toggles.get("stem") == "cifar" else 224


def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return "true or false"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return "a list like 6,12,24,16"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) if a is not type(None) else "null" for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _is_tuple(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(map(_is_tuple, typing.get_args(annotation)))
    return typing.get_origin(annotation) is tuple


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable hints only cost the friendlier messages
        return {}


class _Parser(ArgumentParser):
    """jsonargparse's typed parsing, but an error is raised as one line instead of printing usage and exiting."""

    def error(self, message: str, *args: Any, **kwargs: Any) -> typing.NoReturn:  # type: ignore[override]
        raise argparse.ArgumentError(None, message)


def _normalize(argv: list[str], hints: dict[str, Any]) -> list[str]:
    """``--growth-rate`` and ``--growth_rate`` are the same toggle; ``6,12,24,16`` is accepted for a tuple."""
    out: list[str] = []
    wants_tuple = False  # the previous token was a tuple toggle waiting for its value
    for token in argv:
        if token.startswith("--"):
            flag, eq, value = token[2:].partition("=")
            key = flag.replace("-", "_")
            wants_tuple = _is_tuple(hints.get(key))
            if eq and wants_tuple and value[:1] not in ("[", "n"):
                value = f"[{value}]"
            token, wants_tuple = f"--{key}{eq}{value}", wants_tuple and not eq
        elif wants_tuple:
            token = token if token[:1] in ("[", "n") else f"[{token}]"
            wants_tuple = False
        out.append(token)
    return out


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise UsageError(f"bad --input-size {text!r}; give N or HxW, e.g. 224 or 224x224") from None
    if h < 1 or w < 1:
        raise UsageError(f"bad --input-size {text!r}; sides must be positive")
    return h, w


def _parse(name: str, argv: list[str]) -> tuple[type[nn.Module], dict[str, Any], argparse.Namespace]:
    """The family, its full toggles (preset, then the command line) and the summary's own options."""
    try:
        cls, preset = resolve(name)
    except ValueError as err:
        raise UsageError(str(err)) from None
    hints = _type_hints(cls)
    toggles = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    argv = _normalize(argv, hints)
    for token in argv:
        key = token[2:].partition("=")[0] if token.startswith("--") else None
        if key is not None and key not in toggles and key not in _OWN_OPTIONS:
            hint = " (the table's nesting level is --expand)" if key == "depth" else ""
            raise UsageError(f"unknown toggle --{key} for {cls.__name__}; valid toggles: {', '.join(toggles)}{hint}")

    parser = _Parser(prog=f"lightning_depth summary {name}", exit_on_error=False)
    parser.add_class_arguments(cls, nested_key=None, fail_untyped=False)
    parser.set_defaults(**preset)
    parser.add_argument("--input_size", type=str, default=None, help="image side N or HxW (default: the paper's)")
    parser.add_argument("--format", type=str, choices=["table", "json"], default="table")
    parser.add_argument("--expand", type=int, default=None, help="module nesting level of the rows (default: auto)")
    try:
        cfg = parser.parse_args(argv)
    except argparse.ArgumentError as err:
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        bad = re.match(r'Parser key "([^"]+)":.*(?:Got|Given) value: (.*)$', text)
        if bad and bad.group(1) in hints:
            key, got = bad.groups()
            text = f"bad value {got!r} for --{key} of {cls.__name__}; expected {_describe(hints[key])}"
        elif text.startswith("the following arguments are required"):
            missing = [f"--{k.strip()}" for k in text.partition(":")[2].split(",")]
            text = f"{name} needs {', '.join(missing)}: {cls.__name__} has no default for it"
        elif text.startswith("unrecognized arguments"):
            text = f"{text}; give toggles as --NAME VALUE (valid toggles: {', '.join(toggles)})"
        raise UsageError(text) from None
    return cls, {k: cfg[k] for k in toggles if k in cfg}, cfg


def _build(cls: type[nn.Module], kwargs: dict[str, Any], meta: bool) -> nn.Module:
    """Build on the meta device when asked: no weight initialisation (VGG's 138 M take seconds), same shapes."""
    try:
        if meta:
            with torch.device("meta"):
                return cls(**kwargs)
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{cls.__name__}: {err}") from None


def _summarize_or_advise(
    cls: type[nn.Module], kwargs: dict[str, Any], size: tuple[int, int], depth: int | None, name: str
) -> ModelSummary:
    """The summary; for an input the model cannot take, a UsageError naming the smallest square input that runs."""
    paper, in_channels = paper_input_size(cls, kwargs), kwargs.get("in_channels", 3)
    model = _build(cls, kwargs, meta=True)
    for meta in (True, False):
        try:
            return summarize(model, size, in_channels, depth=depth, name=name)
        except InputSizeError as err:
            try:
                summarize(model, paper, in_channels)
            except InputSizeError as at_paper_size:
                if meta:  # perhaps the model makes tensors of its own on a fixed device: try real weights
                    model = _build(cls, kwargs, meta=False)
                    continue
                raise at_paper_size.__cause__ from None  # broken at its own size: a bug, so show the traceback
            smallest = smallest_input_size(model, paper, in_channels)
            raise UsageError(f"{err}; smallest square input that runs: {smallest} (paper: {paper})") from None
    raise AssertionError("unreachable")


def main(argv: list[str]) -> int:
    """``lightning_depth summary NAME [--TOGGLE VALUE ...]``: the table (or JSON) of one model at the paper's size."""
    argv = list(argv)
    if not argv:
        raise UsageError("give a model name: summary NAME [--TOGGLE VALUE ...]; `summary --help` for more")
    if argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0
    if argv[0].startswith("-"):
        raise UsageError(f"the model name comes first: summary NAME [--TOGGLE VALUE ...], got {argv[0]!r}")
    name = argv[0]
    cls, kwargs, cfg = _parse(name, argv[1:])
    if cfg.expand is not None and cfg.expand < 1:
        raise UsageError(f"--expand {cfg.expand}: the nesting level starts at 1 (the model's children)")
    paper = paper_input_size(cls, kwargs)
    size = _parse_size(cfg.input_size) if cfg.input_size else (paper, paper)
    summary = _summarize_or_advise(cls, kwargs, size, cfg.expand, name)
    print(json.dumps(summary.to_dict(), indent=2) if cfg.format == "json" else format_table(summary))
    return 0
