"""``status DIR``: where every trial of an ablation stands, read from its ``state.json`` (and SLURM's queue)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lightning_depth.ablation.ledger import STATES, Ablation, Trial, find_ablation, load_ablation

FORMATS = ("text", "json")
COLUMNS = ("id", "arm", "seed", "state", "attempts", "queue", "value", "reason")


def queue_states(jobs: list[str]) -> dict[str, str | None]:
    """SLURM state per job (``RUNNING``, ``COMPLETED``...); None where ``squeue`` is absent or forgot the job."""
    from lightning_depth.ablation.slurm import queue_states as squeue_states

    known = squeue_states(list(dict.fromkeys(jobs))) if jobs else {}
    return {job: known.get(job) for job in jobs}


def trial_rows(ablation: Ablation) -> list[dict[str, Any]]:
    """One plain dict per trial, in launch order (the JSON output)."""
    jobs = {t.id: t.state.slurm_job for t in ablation.trials if t.state is not None and t.state.slurm_job}
    queue = queue_states([str(job) for job in jobs.values()])
    return [_row(t, ablation.metric, queue.get(str(jobs.get(t.id)))) for t in ablation.trials]


def totals(ablation: Ablation) -> dict[str, int]:
    return {state: sum(t.status == state for t in ablation.trials) for state in STATES}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-depth status", description=__doc__.splitlines()[0])
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


def _row(trial: Trial, metric: str, queue: str | None) -> dict[str, Any]:
    state = trial.state
    return {"id": trial.id, "arm": trial.arm, "seed": trial.seed, "state": trial.status,
            "attempts": state.attempts if state else 0, "reason": state.reason if state else None,
            "updated": state.updated if state else None, "host": state.host if state else None,
            "slurm_job": state.slurm_job if state else None, "queue": queue,
            "value": trial.value(metric) if trial.status == "done" else None}


def _text(ablation: Ablation, rows: list[dict[str, Any]]) -> str:
    """An aligned table; ``value`` is the final ``metric`` of done trials."""
    cells = [[_cell(row[c]) for c in COLUMNS] for row in rows]
    header = [c if c != "value" else ablation.metric for c in COLUMNS]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(COLUMNS))]
    lines = [f"ablation {ablation.name} ({ablation.path})"]
    lines += ["  ".join(text.ljust(width) for text, width in zip(r, widths)).rstrip() for r in [header, *cells]]
    counts = totals(ablation)
    lines.append(f"{len(rows)} trials: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else " ".join(str(value).split())
