"""The package's imports point one way: a module never imports a module of a higher layer (not even inside a
function), never another module's ``_private`` name, and no two modules import each other (CONTRIBUTING.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_depth"

# Lowest first. A module's layer is that of the longest prefix listed here.
LAYERS = [
    ("utilities", ["lightning_depth", "lightning_depth.errors", "lightning_depth.fmt", "lightning_depth.metrics",
                   "lightning_depth.atomic", "lightning_depth.evidence"]),
    ("models, data", ["lightning_depth.models", "lightning_depth.data"]),
    ("module, callbacks", ["lightning_depth.module", "lightning_depth.callbacks", "lightning_depth.loggers",
                           "lightning_depth.evidence_callback", "lightning_depth.checkpoints"]),
    ("run plumbing", ["lightning_depth.runs", "lightning_depth.configs"]),
    ("ablation", ["lightning_depth.ablation"]),
    ("commands", ["lightning_depth.cli", "lightning_depth.commands", "lightning_depth.bench",
                  "lightning_depth.__main__"]),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{module} is in no layer: add it to LAYERS and to CONTRIBUTING.md's map"
    return level


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import of a lightning_depth module, anywhere in the file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                # `from lightning_depth.ablation import ledger` imports the module ledger, not a name.
                if f"{base}.{alias.name}" in MODULES:
                    found.append((f"{base}.{alias.name}", [], node.lineno))
                else:
                    found.append((base, [alias.name], node.lineno))
    return [(target, names, line) for target, names, line in found
            if target == "lightning_depth" or target.startswith("lightning_depth.")]


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_use_public_names_only(module):
    problems = []
    for target, names, line in imports(module):
        if layer_of(target) > layer_of(module):
            problems.append(f"line {line}: imports {target} ({LAYERS[layer_of(target)][0]}) from a lower layer "
                            f"({LAYERS[layer_of(module)][0]})")
        problems += [f"line {line}: imports the private name {name} of {target}" for name in names
                     if name.startswith("_") and target != module]
    assert not problems, f"{MODULES[module]}:\n" + "\n".join(problems)


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}
    # A package's __init__ that re-exports its own modules is not a cycle with them.
    graph = {m: {t for t in ts if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path, monkeypatch):
    # The rule would be empty if the parser missed imports placed inside functions, so check the checker.
    fake = PACKAGE / "models" / "resnet.py"
    source = "def f():\n    from lightning_depth.cli import DepthCLI\n    from lightning_depth.runs import _x\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else Path.read_bytes(
        self).decode())
    found = imports("lightning_depth.models.resnet")
    assert ("lightning_depth.cli", ["DepthCLI"], 2) in found
    assert layer_of("lightning_depth.cli") > layer_of("lightning_depth.models.resnet")
    assert ("lightning_depth.runs", ["_x"], 3) in found
