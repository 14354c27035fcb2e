"""``python -m lightning_depth trial DIR``: run one trial of an ablation from its directory, idempotently.

The trial keeps its own ledger entry: running when it starts, done once ``result.json`` is written, diverged when
training stopped on a non-finite loss or metric (a result too), failed with a one-line reason otherwise. A finished or
diverged trial is never trained again; an interrupted one resumes from its newest checkpoint (``fit`` does that for
any run directory), and one whose training had finished writes the same ``result.json`` again from its final
checkpoint, so running it again for any reason never loses a result. Every launcher (local processes, SLURM array
tasks) runs exactly this command, so a trial behaves the same wherever it runs.
"""

from __future__ import annotations

import fcntl
import os
import sys
import traceback
from pathlib import Path

import yaml

from lightning_depth.ablation import ledger
from lightning_depth.ablation.liveness import Heartbeat, launcher_gone
from lightning_depth.cli import run_cli
from lightning_depth.errors import UsageError
from lightning_depth.metrics import RESULT_FILE
from lightning_depth.runs import is_rank_zero

LOCK_FILE = ".lock"
MAX_REQUEUES_ENV = "LIGHTNING_DEPTH_MAX_REQUEUES"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        raise UsageError("usage: python -m lightning_depth trial TRIAL_DIR")
    trial_dir = Path(argv[0])
    config = trial_dir / "config.yaml"
    if not config.is_file():
        raise UsageError(f"{trial_dir} is not a trial directory (no config.yaml); trials are written by "
                         "`fit --config FILE` with an ablation: section")
    _check_writes_here(trial_dir, config)
    # DDP workers (Lightning's subprocess launcher, or srun tasks) run this command too; only rank 0 keeps the ledger.
    if not is_rank_zero():
        return run_cli(["fit", "--config", str(config)])
    with open(trial_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"trial {trial_dir.name} is already running elsewhere; not starting it twice", file=sys.stderr)
            return ledger.ALREADY_RUNNING_EXIT
        return _run_locked(trial_dir, config)


def _check_writes_here(trial_dir: Path, config: Path) -> None:
    """The trial's outputs must land in the directory its lock and ledger are in, whatever the working directory."""
    try:
        root = ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("default_root_dir")
    except (yaml.YAMLError, OSError, AttributeError):
        return  # the fit command says what is wrong with the file
    if root and Path(root).absolute().resolve() != trial_dir.absolute().resolve():
        raise UsageError(f"{config} trains into {Path(root).absolute()}, not into {trial_dir.absolute()}: it was "
                         "moved, or written with a relative path; run the ablation's fit command again to rewrite it")


def _run_locked(trial_dir: Path, config: Path) -> int:
    try:
        state = ledger.read_state(trial_dir)
    except ValueError as err:
        raise UsageError(f"{err}; fix or delete the file to run this trial again") from None
    if state is not None and state.state in ("done", "diverged") and (trial_dir / RESULT_FILE).is_file():
        print(f"trial {trial_dir.name} is {state.state}; nothing to train", file=sys.stderr)
        return 0
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    limit = int(os.environ.get(MAX_REQUEUES_ENV, "-1") or -1)
    if 0 <= limit < restarts:
        ledger.mark_failed(trial_dir, f"requeued {restarts} times, more than the limit of {limit}")
        return 1
    # result.json stays until fit replaces it: a fit that had finished before writes the same one again.
    ledger.mark_running(trial_dir)
    try:
        with Heartbeat(trial_dir):
            code = run_cli(["fit", "--config", str(config)])
    except UsageError as err:
        ledger.mark_failed(trial_dir, str(err))
        raise
    except BaseException as err:  # record why, then let the traceback show the bug
        if _preempted(err):
            ledger.write_state(trial_dir, "pending", reason="interrupted by a signal; resumes when run again")
            raise
        # Its launcher was killed: the kernel is about to end this trial too, and the W&B service, the launcher's,
        # is already gone. What failed is the launch, not the trial.
        if launcher_gone(grace_s=1.0 if isinstance(err, ConnectionError) else 0.0):
            ledger.write_state(trial_dir, "pending", reason="its launcher ended; resumes when run again")
            return 1
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        ledger.mark_failed(trial_dir, f"{type(err).__name__}: {message}"[:300])
        traceback.print_exc()
        return 1
    result = ledger.read_result(trial_dir) or {}
    if code != 0 and result.get("status") == "diverged":
        diverged = result.get("diverged") or {}
        ledger.mark_diverged(trial_dir, f"{diverged.get('metric')} is {diverged.get('value')} at step "
                                        f"{diverged.get('step')}")
        return 0
    if code == 0 and (trial_dir / RESULT_FILE).is_file():
        ledger.mark_done(trial_dir)
        return 0
    ledger.mark_failed(trial_dir, f"fit exited with code {code}")
    return code or 1


def _preempted(err: BaseException) -> bool:
    return isinstance(err, KeyboardInterrupt) or type(err).__name__ == "SIGTERMException"
