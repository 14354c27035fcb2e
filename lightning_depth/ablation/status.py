"""Where every trial of an ablation stands, read from its ``state.json`` (and SLURM's queue for SLURM trials); a
running trial whose process or job is gone is interrupted, with the reason (:mod:`liveness`)."""

from __future__ import annotations

from typing import Any

from lightning_depth.ablation.ledger import SHOWN_STATES, Ablation, Trial
from lightning_depth.ablation.liveness import mark_interrupted

COLUMNS = ("id", "arm", "seed", "state", "attempts", "queue", "value", "reason")


def trial_rows(ablation: Ablation) -> list[dict[str, Any]]:
    """One plain dict per trial, in launch order (the JSON output); marks interrupted trials on ``ablation``."""
    queue = mark_interrupted(ablation) or {}
    return [row(t, ablation.metric, queue.get(str(t.state.slurm_job)) if t.state and t.state.slurm_job else None)
            for t in ablation.trials]


def totals(ablation: Ablation) -> dict[str, int]:
    return {state: sum(t.status == state for t in ablation.trials) for state in SHOWN_STATES}


def row(trial: Trial, metric: str, queue: str | None) -> dict[str, Any]:
    state = trial.state
    return {"id": trial.id, "arm": trial.arm, "seed": trial.seed, "state": trial.status,
            "attempts": state.attempts if state else 0,
            "reason": trial.interrupted or (state.reason if state else None),
            "updated": state.updated if state else None, "heartbeat": state.heartbeat if state else None,
            "host": state.host if state else None, "pid": state.pid if state else None,
            "slurm_job": state.slurm_job if state else None, "queue": queue,
            "value": trial.value(metric) if trial.status == "done" else None}
