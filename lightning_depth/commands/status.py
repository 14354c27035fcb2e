"""``status DIR``: where every trial of an ablation stands, read from its ``state.json`` (and SLURM's queue)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lightning_depth import fmt
from lightning_depth.ablation.ledger import SHOWN_STATES, Ablation, find_ablation, load_ablation
from lightning_depth.ablation.status import COLUMNS, totals, trial_rows

FORMATS = ("text", "json")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_depth status", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="an ablation directory (with ablation.json) or a directory holding exactly one")
    parser.add_argument("--format", choices=FORMATS, default="text")
    args = parser.parse_args(argv)
    ablation = load_ablation(find_ablation(args.dir))
    rows = trial_rows(ablation)
    if args.format == "json":
        print(json.dumps({"ablation": ablation.name, "metric": ablation.metric, "totals": totals(ablation),
                          "trials": rows}, indent=2))
        return 0
    print(_text(ablation, rows))
    return 0


def _text(ablation: Ablation, rows: list[dict[str, Any]]) -> str:
    """An aligned table; ``value`` is the final ``metric`` of done trials."""
    cells = [[_cell(row[c]) for c in COLUMNS] for row in rows]
    header = [c if c != "value" else ablation.metric for c in COLUMNS]
    lines = [f"ablation {ablation.name} ({ablation.path})", *fmt.table(header, cells, rule=False)]
    counts = totals(ablation)
    lines.append(f"{len(rows)} trials: " + ", ".join(f"{counts[s]} {s}" for s in SHOWN_STATES))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else " ".join(str(value).split())
