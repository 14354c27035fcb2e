"""``python -m lightning_depth trial DIR``: run one trial of an ablation from its directory, idempotently.

The trial keeps its own ledger entry: running when it starts, done once ``result.json`` is written, failed with a
one-line reason otherwise. A finished trial is never trained again; an interrupted one resumes from its last
checkpoint (``fit`` does that for any run directory). Every launcher (local processes, SLURM array tasks) runs
exactly this command, so a trial behaves the same wherever it runs.
"""

from __future__ import annotations

import fcntl
import os
import sys
import traceback
from pathlib import Path

from lightning_depth.ablation import ledger
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
    # DDP workers (Lightning's subprocess launcher, or srun tasks) run this command too; only rank 0 keeps the ledger.
    if not is_rank_zero():
        return run_cli(["fit", "--config", str(config)])
    with open(trial_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"trial {trial_dir.name} is already running elsewhere; not starting it twice", file=sys.stderr)
            return 3
        return _run_locked(trial_dir, config)


def _run_locked(trial_dir: Path, config: Path) -> int:
    state = ledger.read_state(trial_dir)
    if state is not None and state.state == "done" and (trial_dir / RESULT_FILE).is_file():
        print(f"trial {trial_dir.name} is done; nothing to train", file=sys.stderr)
        return 0
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    limit = int(os.environ.get(MAX_REQUEUES_ENV, "-1") or -1)
    if 0 <= limit < restarts:
        ledger.mark_failed(trial_dir, f"requeued {restarts} times, more than the limit of {limit}")
        return 1
    (trial_dir / RESULT_FILE).unlink(missing_ok=True)  # a result is written only by a completed fit
    ledger.mark_running(trial_dir)
    try:
        code = run_cli(["fit", "--config", str(config)])
    except UsageError as err:
        ledger.mark_failed(trial_dir, str(err))
        raise
    except BaseException as err:  # record why, then let the traceback show the bug
        if _preempted(err):
            ledger.write_state(trial_dir, "pending", reason="interrupted by a signal; resumes when run again")
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        ledger.mark_failed(trial_dir, f"{type(err).__name__}: {message}"[:300])
        traceback.print_exc()
        return 1
    if code == 0 and (trial_dir / RESULT_FILE).is_file():
        ledger.mark_done(trial_dir)
        return 0
    ledger.mark_failed(trial_dir, f"fit exited with code {code}")
    return code or 1


def _preempted(err: BaseException) -> bool:
    return isinstance(err, KeyboardInterrupt) or type(err).__name__ == "SIGTERMException"
