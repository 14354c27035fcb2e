"""Ablations: every arm of a design choice trained over several seeds, then compared with statistics.

The lifecycle is setup -> launch -> collect -> analyze, and every step leaves files a person can read:

- :mod:`~lightning_depth.ablation.spec` turns the experiment file's ``ablation:`` section into arms and trials
  (pure, deterministic) and gives each trial a stable, content-addressed id;
- :mod:`~lightning_depth.ablation.ledger` is the on-disk layout: ``ablation.json``, and per trial ``trial.json``,
  ``state.json`` (atomic, lock-free), ``result.json`` and Lightning's ``metrics.csv``;
- :mod:`~lightning_depth.ablation.stats` computes mean ± std over seeds and seed-paired deltas with t intervals;
- :mod:`~lightning_depth.ablation.report` (``compare DIR``) and :mod:`~lightning_depth.ablation.status`
  (``status DIR``) read those files back, also while trials are still running.
"""

from lightning_depth.ablation.ledger import (
    Ablation,
    Trial,
    TrialState,
    load_ablation,
    mark_done,
    mark_failed,
    mark_running,
    read_result,
    read_state,
    write_ablation,
    write_json_atomic,
    write_state,
    write_trial,
)
from lightning_depth.ablation.spec import AblationSpec, Arm, expand, parse_spec, trial_id, trials

__all__ = [
    "Ablation",
    "AblationSpec",
    "Arm",
    "Trial",
    "TrialState",
    "expand",
    "load_ablation",
    "mark_done",
    "mark_failed",
    "mark_running",
    "parse_spec",
    "read_result",
    "read_state",
    "trial_id",
    "trials",
    "write_ablation",
    "write_json_atomic",
    "write_state",
    "write_trial",
]
