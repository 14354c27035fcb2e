"""A configuration as the command line reads it: errors in one line, and the import paths a config may name.

Configs are code: every ``class_path`` (and callable) a config names is imported and called, so jsonargparse
imports only from the packages below and the prefixes a config adds under ``import_allowlist:``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from lightning_depth.errors import UsageError

# Configs are code: every class_path (and callable) a config names is imported and called. jsonargparse imports only
# paths under these packages, plus the prefixes a config adds under IMPORT_ALLOWLIST_KEY; inside them, the modules
# that load or compile code on request stay refused.
TRUSTED_IMPORTS = ("lightning_depth", "torch", "torchvision", "timm", "lightning")
UNTRUSTED_WITHIN = ("torch.hub", "torch.utils.cpp_extension", "torch.package", "torch.load", "torch.serialization",
                    "torch.jit.load", "timm.models._hub", "timm.models.hub")
IMPORT_ALLOWLIST_KEY = "import_allowlist"

# How jsonargparse frames a value that fits no member of a union (``data: LightningDataModule | None``) or that it
# also tried as a config file path: around the reason, which is the member's own error, never the reason itself.
UNION_FRAMING = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
                 "Given value:", "Expected a <class 'NoneType'>", "Expected a path but ")
# Lines that open a class's own arguments: the keys under them are its init_args.
_CLASS_LEVEL = re.compile(r"^(?:Problem with given class_path '[^']*':|.*expects a function or a callable class:)\s*")
_KEY = re.compile(r'^Parser key "([^"]+)":?\s*')


def one_line(message: str) -> str:
    """jsonargparse explains a nested failure over several lines, trying every member of a union in turn; say it in
    one: the full key of the deepest value that failed (``data.init_args.root``) and its reason, without the dumps
    of the values around it."""
    lines = [line for line in message.splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    found: tuple[int, str, str] | None = None  # (depth, key, reason) of the deepest reason, the first of equals
    scope: list[tuple[int, str | None]] = []  # (indent, key); None opens a class's init_args
    for raw in lines:
        text = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        text = text.removeprefix("- ")
        while scope and scope[-1][0] >= indent:
            scope.pop()
        if opened := _CLASS_LEVEL.match(text):
            scope.append((indent, None))
            text = text[opened.end():]
        if key := _KEY.match(text):
            scope.append((indent, key[1]))
            text = text[key.end():]
        if not text or text.startswith(UNION_FRAMING):
            continue
        keys = [k for _, k in scope]
        depth = sum(k is not None for k in keys)
        if found is None or depth > found[0]:
            found = (depth, _dotted_key(keys), text)
    if found is None:
        return lines[0].strip()
    _, path, reason = found
    return f"{path}: {_plain(reason)}" if path else _plain(reason)


def _dotted_key(keys: list[str | None]) -> str:
    parts: list[str] = []
    for index, key in enumerate(keys):
        if key is None:
            continue
        if index and keys[index - 1] is None and parts:
            parts.append("init_args")
        parts.append(key)
    return ".".join(parts)


def _plain(reason: str) -> str:
    """jsonargparse's wording, less the Python reprs: ``expected int, got x``, ``expected one of local, slurm``."""
    reason = re.sub(r"\.* *Got value: Namespace\(.*$", "", reason)
    denied = re.match(r"Importing '([^']+)' is not allowed", reason)
    if denied:
        return (f"{denied[1]} is not allowed: a config imports only from {', '.join(TRUSTED_IMPORTS)} or a prefix "
                f"it lists under {IMPORT_ALLOWLIST_KEY}: (configs are code)")
    reason = re.sub(r"Expected a typing\.Literal\[(.*?)\]", lambda m: "expected one of " + m[1].replace("'", ""),
                    reason)
    reason = re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", reason)
    reason = re.sub(r"\.+ *Got value: ", ", got ", reason).strip()
    if reason.startswith("(") and reason.endswith(")"):
        reason = reason[1:-1]
    return reason.rstrip(".")


def import_allowlist(argv: list[str]) -> list[str]:
    """The import prefixes a command line adds to :data:`TRUSTED_IMPORTS`: ``import_allowlist`` in each ``--config``
    file (and the files those compose with ``config:``) and ``--import_allowlist`` itself. Read before parsing,
    since parsing imports the class paths it checks."""
    found: list[str] = []
    seen: set[Path] = set()

    def read(path: Path) -> None:
        path = path.expanduser().absolute()
        if path in seen or not path.is_file():
            return  # the parser reports a missing file
        seen.add(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return
        if not isinstance(data, dict):
            return
        composed = data.get("config")
        for name in composed if isinstance(composed, list) else [composed]:
            if isinstance(name, str):
                read(path.parent / name)
        add(data.get(IMPORT_ALLOWLIST_KEY), str(path))

    def add(value: Any, where: str) -> None:
        for entry in value if isinstance(value, list) else [] if value is None else [value]:
            if not isinstance(entry, str) or not all(p.isidentifier() for p in entry.split(".")) \
                    or entry.split(".")[0] == "jsonargparse":
                raise UsageError(f"{IMPORT_ALLOWLIST_KEY} in {where}: {entry!r} is not a dotted import prefix "
                                 "(e.g. my_lab.models)")
            found.append(entry)

    flag = f"--{IMPORT_ALLOWLIST_KEY}"
    for index, arg in enumerate(argv):
        name, has_value, inline = arg.partition("=")
        value = inline if has_value else (argv[index + 1] if index + 1 < len(argv) else None)
        if name in ("--config", "-c") and value:
            read(Path(value))
        elif name == flag and value:
            try:
                add(yaml.safe_load(value), "the command line")
            except yaml.YAMLError:
                add(value, "the command line")
    return found
