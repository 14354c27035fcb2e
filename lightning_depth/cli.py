"""Command line: LightningCLI for fit/validate/test/predict, plus the tools summary, compare, status and bench."""

from __future__ import annotations

import importlib
import sys

from lightning_depth.errors import UsageError

# Subcommands that are not training: each module exposes ``main(argv: list[str]) -> int``.
TOOLS = {
    "summary": "lightning_depth.summary",
    "compare": "lightning_depth.ablation.report",
    "status": "lightning_depth.ablation.status",
    "bench": "lightning_depth.bench",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TOOLS:
            return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        raise UsageError("training subcommands are not wired yet")
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
