"""Where every trial of an ablation stands, read from its ``state.json`` (and SLURM's queue for SLURM trials)."""

from __future__ import annotations

from typing import Any

from lightning_depth.ablation.ledger import STATES, Ablation, Trial
from lightning_depth.ablation.slurm import queue_states as squeue_states

COLUMNS = ("id", "arm", "seed", "state", "attempts", "queue", "value", "reason")


def queue_states(jobs: list[str]) -> dict[str, str | None]:
    """SLURM state per job (``RUNNING``, ``COMPLETED``...); None where ``squeue`` is absent or forgot the job."""
    known = squeue_states(list(dict.fromkeys(jobs))) if jobs else {}
    return {job: known.get(job) for job in jobs}


def trial_rows(ablation: Ablation) -> list[dict[str, Any]]:
    """One plain dict per trial, in launch order (the JSON output)."""
    jobs = {t.id: t.state.slurm_job for t in ablation.trials if t.state is not None and t.state.slurm_job}
    queue = queue_states([str(job) for job in jobs.values()])
    return [row(t, ablation.metric, queue.get(str(jobs.get(t.id)))) for t in ablation.trials]


def totals(ablation: Ablation) -> dict[str, int]:
    return {state: sum(t.status == state for t in ablation.trials) for state in STATES}


def row(trial: Trial, metric: str, queue: str | None) -> dict[str, Any]:
    state = trial.state
    return {"id": trial.id, "arm": trial.arm, "seed": trial.seed, "state": trial.status,
            "attempts": state.attempts if state else 0, "reason": state.reason if state else None,
            "updated": state.updated if state else None, "host": state.host if state else None,
            "slurm_job": state.slurm_job if state else None, "queue": queue,
            "value": trial.value(metric) if trial.status == "done" else None}
