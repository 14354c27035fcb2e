"""``lightning_depth summary NAME [--TOGGLE VALUE ...]``: one network's layers, parameters and multiply-adds."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import types
import typing
from typing import Any

import torch
from jsonargparse import ArgumentParser
from torch import nn

from lightning_depth.errors import UsageError
from lightning_depth.models.complexity import (
    InputSizeError,
    ModelSummary,
    format_table,
    paper_input_size,
    profile_model,
    smallest_input_size,
)
from lightning_depth.models.registry import resolve

_OWN_OPTIONS = ("input_size", "format", "expand", "help")
_USAGE = (
    "usage: lightning_depth summary NAME [--TOGGLE VALUE ...] [--input-size N|HxW] [--format table|json] [--expand N]\n"
    "  NAME: a family or preset (see lightning_depth.models.list_models()); toggles are the family's constructor\n"
    "  arguments (--preact true, --growth-rate 12); `summary NAME --help` lists them."
)


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
    except Exception:  # noqa: BLE001 - unresolvable hints only cost the friendlier messages
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


def _profile_or_advise(
    cls: type[nn.Module], kwargs: dict[str, Any], size: tuple[int, int], depth: int | None, name: str
) -> ModelSummary:
    """The summary; for an input the model cannot take, a UsageError naming the smallest square input that runs."""
    paper, in_channels = paper_input_size(cls, kwargs), kwargs.get("in_channels", 3)
    model = _build(cls, kwargs, meta=True)
    for meta in (True, False):
        try:
            return profile_model(model, size, in_channels, depth=depth, name=name)
        except InputSizeError as err:
            try:
                profile_model(model, paper, in_channels)
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
    summary = _profile_or_advise(cls, kwargs, size, cfg.expand, name)
    print(json.dumps(summary.to_dict(), indent=2) if cfg.format == "json" else format_table(summary))
    return 0
