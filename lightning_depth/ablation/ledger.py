"""An ablation on disk: one directory per trial, one small JSON file per fact, no locks and no database.

Layout (``<dir>`` is the ablation directory)::

    <dir>/ablation.json         name, design, metric, baseline arm, factors, trial ids in launch order
    <dir>/<trial id>/trial.json id, arm, seed, overrides, is_baseline
    <dir>/<trial id>/state.json pending | running | done | diverged | failed, reason, attempts, updated, host, pid,
                                slurm_job, heartbeat (refreshed while the trial trains)
    <dir>/<trial id>/config.yaml, result.json, csv/version_*/metrics.csv

Each trial's state has its own file, written by one process at a time (the driver before launch, then the trial
itself), and every write is a temp file in the same directory plus ``os.replace``. So any number of processes on any
number of nodes sharing a filesystem never see a half-written file (:mod:`lightning_depth.atomic`) and never
contend for a lock.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from lightning_depth.ablation.spec import AblationSpec, Arm, expand
from lightning_depth.atomic import write_json
from lightning_depth.errors import UsageError
from lightning_depth.metrics import RESULT_FILE

# diverged: training stopped on a non-finite loss or metric; a result (result.json says where), not a crash, and
# never a value to compare.
State = Literal["pending", "running", "done", "diverged", "failed"]
STATES: tuple[str, ...] = ("pending", "running", "done", "diverged", "failed")
# interrupted: the ledger says running, but the trial's process or SLURM job is gone (``liveness`` decides); never
# written to disk, a relaunch resumes such a trial.
INTERRUPTED = "interrupted"
_AFTER_RUNNING = STATES.index("running") + 1
SHOWN_STATES: tuple[str, ...] = (*STATES[:_AFTER_RUNNING], INTERRUPTED, *STATES[_AFTER_RUNNING:])
ABLATION_FILE, TRIAL_FILE, STATE_FILE = "ablation.json", "trial.json", "state.json"
# Exit code of ``trial DIR`` when another process holds the trial: not a failure of the trial.
ALREADY_RUNNING_EXIT = 3
NOT_FOUND = (
    "no ablation found under {}; expected ablation.json written by `fit --config FILE` with an ablation: section"
)


@dataclass
class TrialState:
    """The content of ``state.json``."""

    state: State
    reason: str | None = None
    attempts: int = 0
    updated: str | None = None
    host: str | None = None
    pid: int | None = None
    slurm_job: str | None = None
    heartbeat: str | None = None


@dataclass
class Trial:
    """One (arm, seed) as found on disk; ``arm``/``seed`` are None while its ``trial.json`` is not written yet."""

    id: str
    dir: Path
    arm: str | None = None
    seed: int | None = None
    overrides: dict[str, Any] | None = None
    is_baseline: bool = False
    state: TrialState | None = None
    result: dict[str, Any] | None = None
    interrupted: str | None = None  # why a running trial is not running any more (set by ``liveness``)

    @property
    def status(self) -> str:
        """The trial's state; a trial with a result but no state file (written by hand) counts as done, and a result
        that says it diverged is diverged whatever the state file says."""
        if self.result is not None and self.result.get("status") == "diverged":
            return "diverged"
        if self.interrupted is not None:
            return INTERRUPTED
        if self.state is not None:
            return self.state.state
        return "done" if self.result is not None else "pending"

    def value(self, metric: str, which: Literal["final", "best"] = "final") -> float | None:
        """A metric from ``result.json`` (None when the trial has no result or did not log it)."""
        entry = ((self.result or {}).get("metrics") or {}).get(metric) or {}
        value = entry.get(which)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Ablation:
    """An ablation directory read back: its manifest and every trial listed there, in launch order."""

    path: Path
    name: str
    design: str
    metric: str
    baseline: str | None
    factors: dict[str, list[Any]]
    trials: list[Trial]

    @property
    def arms(self) -> list[str]:
        """Arm names in launch order (the first seed's order)."""
        return list(dict.fromkeys(t.arm for t in self.trials if t.arm is not None))


def trial_dir(ablation_dir: str | os.PathLike, trial_id: str) -> Path:
    """Where a trial lives: directly under the ablation directory, named by its id."""
    return Path(ablation_dir) / trial_id


def ablation_manifest(spec: AblationSpec, trial_ids: list[str]) -> dict[str, Any]:
    """The content of ``ablation.json`` for ``spec`` and its trial ids in launch order."""
    baseline = next((arm.name for arm in expand(spec) if arm.is_baseline), None)
    return {"name": spec.name, "design": spec.design, "metric": spec.metric, "baseline": baseline,
            "factors": spec.factors, "trials": list(trial_ids)}


def write_ablation(ablation_dir: str | os.PathLike, spec: AblationSpec, trial_ids: list[str]) -> Path:
    """Create the ablation directory and write its ``ablation.json``."""
    path = Path(ablation_dir)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / ABLATION_FILE, ablation_manifest(spec, trial_ids))
    return path / ABLATION_FILE


def write_trial(directory: str | os.PathLike, trial_id: str, arm: Arm, seed: int) -> None:
    """Create a trial directory with its ``trial.json``; the state starts pending unless one exists (a relaunch)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / TRIAL_FILE, {"id": trial_id, "arm": arm.name, "seed": seed,
                                          "overrides": arm.overrides, "is_baseline": arm.is_baseline})
    try:
        if read_state(path) is None:
            write_state(path, "pending")
    except ValueError:  # a damaged state.json stays as it is, for its owner to see; the driver reports it
        pass


def read_state(trial_dir: str | os.PathLike) -> TrialState | None:
    """The trial's state, or None when it has no ``state.json``; a malformed file raises ``ValueError``."""
    raw = _read_json(Path(trial_dir) / STATE_FILE)
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or raw.get("state") not in STATES:
        raise ValueError(f"{Path(trial_dir) / STATE_FILE}: state must be one of {', '.join(STATES)}")
    fields = TrialState.__dataclass_fields__
    return TrialState(**{k: v for k, v in raw.items() if k in fields})


def read_result(trial_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The trial's ``result.json`` (written only by a completed fit), or None when absent or unreadable."""
    result = _read_json_or_none(Path(trial_dir) / RESULT_FILE)
    return dict(result) if isinstance(result, Mapping) else None


def write_state(trial_dir: str | os.PathLike, state: State, reason: str | None = None, **extra: Any) -> TrialState:
    """Record ``state`` with time, host and pid; ``attempts`` and ``slurm_job`` carry over unless given in ``extra``.

    Other keys in ``extra`` are stored in the file as well (readers ignore them).
    """
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    path = Path(trial_dir) / STATE_FILE
    previous = _read_json(path)
    previous = previous if isinstance(previous, Mapping) else {}
    record = {"state": state, "reason": reason, "attempts": int(previous.get("attempts", 0)),
              "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": socket.gethostname(),
              "pid": os.getpid(), "slurm_job": previous.get("slurm_job"), **extra}
    write_json(path, record)
    fields = TrialState.__dataclass_fields__
    return TrialState(**{k: v for k, v in record.items() if k in fields})


def mark_running(trial_dir: str | os.PathLike) -> TrialState:
    """A new attempt starts; inside a SLURM job its id is recorded so ``status`` can ask the queue about it."""
    previous = read_state(trial_dir)
    extra: dict[str, Any] = {"attempts": (previous.attempts if previous else 0) + 1,
                             "heartbeat": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    job = _slurm_job_from_env()
    if job:
        extra["slurm_job"] = job
    return write_state(trial_dir, "running", **extra)


def beat(trial_dir: str | os.PathLike) -> None:
    """Refresh the heartbeat of this process's running trial; a state written since by anyone else is left alone."""
    path = Path(trial_dir) / STATE_FILE
    try:
        record = _read_json(path)
    except ValueError:
        return
    if isinstance(record, Mapping) and record.get("state") == "running" and record.get("pid") == os.getpid():
        write_json(path, {**record, "heartbeat": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def mark_done(trial_dir: str | os.PathLike) -> TrialState:
    """The trial finished and wrote its ``result.json``."""
    return write_state(trial_dir, "done")


def mark_diverged(trial_dir: str | os.PathLike, reason: str) -> TrialState:
    """Training stopped on a non-finite loss or metric; ``reason`` names it and the step."""
    return write_state(trial_dir, "diverged", reason=reason)


def mark_failed(trial_dir: str | os.PathLike, reason: str) -> TrialState:
    """The trial stopped with an error; ``reason`` is one line shown by ``status``."""
    return write_state(trial_dir, "failed", reason=reason)


def find_ablation(path: str | os.PathLike) -> Path:
    """The ablation directory at ``path``, or the only one in its children or grandchildren."""
    root = Path(path)
    if (root / ABLATION_FILE).is_file():
        return root
    found = sorted({p.parent for p in [*root.glob(f"*/{ABLATION_FILE}"), *root.glob(f"*/*/{ABLATION_FILE}")]})
    if not found:
        raise UsageError(NOT_FOUND.format(root))
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        raise UsageError(f"several ablations under {root}: {names}; pass one of them")
    return found[0]


def load_ablation(ablation_dir: str | os.PathLike) -> Ablation:
    """Read ``ablation.json`` and every listed trial's ``trial.json``, ``state.json`` and ``result.json``."""
    path = Path(ablation_dir)
    manifest = _read_json(path / ABLATION_FILE, required=True)
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("trials"), list):
        raise UsageError(f"{path / ABLATION_FILE}: expected an object with a list of trial ids under 'trials'")
    located = {p.parent.name: p.parent for p in path.glob(f"*/*/{TRIAL_FILE}")}
    located.update({p.parent.name: p.parent for p in path.glob(f"*/{TRIAL_FILE}")})
    trials = [_load_trial(str(tid), located.get(str(tid), trial_dir(path, str(tid)))) for tid in manifest["trials"]]
    return Ablation(path=path, name=str(manifest.get("name", path.name)), design=str(manifest.get("design", "")),
                    metric=str(manifest.get("metric", "val/acc1")), baseline=manifest.get("baseline"),
                    factors=dict(manifest.get("factors") or {}), trials=trials)


def read_curves(trial_dir: str | os.PathLike) -> dict[str, dict[int, float]]:
    """Metric -> epoch -> value from every ``metrics*.csv`` under the trial, in version order.

    A resumed run writes a new ``version_N``; the last value per (epoch, metric) wins, so an epoch that was
    repeated after a restart is counted once.
    """
    curves: dict[str, dict[int, float]] = {}
    for path in sorted(Path(trial_dir).rglob("metrics*.csv"), key=_version_order):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                epoch = _number(row.get("epoch"))
                if epoch is None:
                    continue
                for key, text in row.items():
                    value = _number(text) if isinstance(key, str) and key not in ("epoch", "step") else None
                    if value is not None:
                        curves.setdefault(key, {})[int(epoch)] = value
    return {key: dict(sorted(points.items())) for key, points in curves.items()}


def _load_trial(trial_id: str, directory: Path) -> Trial:
    trial = Trial(id=trial_id, dir=directory)
    info = _read_json_or_none(directory / TRIAL_FILE)
    if isinstance(info, Mapping):
        trial.arm, trial.seed = info.get("arm"), info.get("seed")
        trial.overrides, trial.is_baseline = dict(info.get("overrides") or {}), bool(info.get("is_baseline"))
    try:
        trial.state = read_state(directory)
    except (ValueError, TypeError) as err:
        trial.state = TrialState("failed", reason=f"unreadable state.json: {err}")
    trial.result = read_result(directory)
    return trial


def _read_json(path: Path, required: bool = False) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        if required:
            raise UsageError(NOT_FOUND.format(path.parent)) from None
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problem = f"{path}: not valid JSON ({err})"
    except OSError as err:  # a teammate's file without group read permission, a directory in its place
        problem = f"{path}: cannot be read ({err.strerror})"
    if required:
        raise UsageError(problem)
    raise ValueError(problem)


def _read_json_or_none(path: Path) -> Any:
    """Files written by hand may be broken; one bad trial must not hide the others."""
    try:
        return _read_json(path)
    except ValueError:
        return None


def _slurm_job_from_env() -> str | None:
    """``JOB_TASK`` for array jobs (what ``squeue -j`` accepts), else the plain job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _version_order(path: Path) -> tuple[int, str]:
    versions = [int(m.group(1)) for part in path.parts if (m := re.fullmatch(r"version_(\d+)", part))]
    return (versions[-1] if versions else -1, str(path))


def _number(text: Any) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None
