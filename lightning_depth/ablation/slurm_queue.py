"""SLURM's queue as an ablation sees it: the jobs it submitted (``slurm/jobs.txt``), which trials their active
tasks hold, and ``squeue``'s answer, which fails closed: a queue that cannot be asked is an error, never "empty"."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_depth.errors import UsageError

JOBS_FILE = "jobs.txt"
# Before per-submission lists, every job read this one file.
SHARED_TRIALS_FILE = "trials.txt"
SQUEUE_TIMEOUT_S = 30.0
# Job states in which a task still holds, or will again hold, a trial directory.
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                           "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"})


def check_queue_clear(ablation_dir: Path, ignore_queue: bool = False) -> None:
    """Refuses while an earlier array job of this ablation is still queued (the same trial would run twice), and
    when the queue cannot be asked about it, unless ``ignore_queue``."""
    jobs = submitted_jobs(ablation_dir)
    if not jobs:
        return
    try:
        states = ask_queue(jobs)
    except QueueUnavailable as err:
        if not ignore_queue:
            raise UsageError(f"cannot tell whether job {', '.join(jobs)} of this ablation still holds trials: {err}; "
                             f"nothing was submitted. Check with squeue -j {','.join(jobs)}, then pass "
                             "--ignore-queue to go ahead anyway") from None
        return  # the caller was told, and said to go ahead
    active = {job: state for job, state in states.items() if state in ACTIVE_STATES}
    if active:
        job = sorted(active)[0].split("_")[0]
        raise UsageError(f"job {job} of this ablation is still queued ({len(active)} task(s) active): wait for it "
                         f"(squeue -j {job}) or cancel it (scancel {job}) before submitting again")


def trial_list(ablation_dir: Path, number: int) -> Path:
    """The trial list of submission ``number``: task i of that job runs line i+1."""
    return Path(ablation_dir) / "slurm" / f"trials-{number}.txt"


def next_submission(ablation_dir: Path) -> int:
    """The number of the next submission: one past the highest trial list on disk."""
    numbers = [int(m[1]) for p in (Path(ablation_dir) / "slurm").glob("trials-*.txt")
               if (m := re.fullmatch(r"trials-(\d+)\.txt", p.name))]
    return max(numbers, default=0) + 1


def _job_records(ablation_dir: Path) -> list[tuple[str, Path]]:
    """(job id, its trial list) for every job in ``jobs.txt``, oldest first."""
    slurm_dir = Path(ablation_dir) / "slurm"
    path = slurm_dir / JOBS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if fields and fields[0].strip():
            records.append((fields[0].strip(), slurm_dir / (fields[2] if len(fields) > 2 else SHARED_TRIALS_FILE)))
    return records


def submitted_jobs(ablation_dir: Path) -> list[str]:
    """Array job ids submitted for this ablation, oldest first (from ``slurm/jobs.txt``)."""
    return [job for job, _ in _job_records(ablation_dir)]


def owned_trials(ablation_dir: Path, states: Mapping[str, str] | None = None) -> dict[Path, str]:
    """Trial directories that an active task of this ablation's jobs runs or will run, with the task and its state
    (``{dir: "job 42_3 is pending"}``). ``states`` is the queue's answer (:func:`ask_queue`, asked when not given,
    raising :class:`QueueUnavailable` when it cannot be)."""
    records = _job_records(ablation_dir)
    if not records:
        return {}
    if states is None:
        states = ask_queue([job for job, _ in records])
    owned: dict[Path, str] = {}
    for job, trials_file in records:
        try:
            lines = trials_file.read_text().splitlines()
        except OSError:
            lines = []
        for task, state in states.items():
            array, _, index = task.partition("_")
            if array == job and state in ACTIVE_STATES and index.isdigit() and int(index) < len(lines):
                owned[Path(lines[int(index)])] = f"job {task} is {state.lower()}"
    return owned


class QueueUnavailable(Exception):  # noqa: N818 - a fact about the queue, raised to the caller that must decide
    """SLURM's queue could not be asked (no squeue, a time-out, an error); the message says which."""


def ask_queue(job_ids: Sequence[str]) -> dict[str, str]:
    """``{"<job>_<task>": "RUNNING", ...}`` for every array task SLURM still lists; raises :class:`QueueUnavailable`
    when ``squeue`` cannot answer. A job SLURM has forgotten (MinJobAge) is absent from the answer."""
    if not job_ids:
        return {}
    squeue = shutil.which("squeue")
    if squeue is None:
        raise QueueUnavailable("squeue not found")
    try:
        done = subprocess.run([squeue, "-h", "-r", "-t", "all", "-j", ",".join(job_ids), "-o", "%i %T"],
                              capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise QueueUnavailable(f"squeue did not answer within {SQUEUE_TIMEOUT_S:g} s") from None
    except OSError as err:
        raise QueueUnavailable(f"squeue could not run ({err.strerror})") from None
    # Asked about a single job SLURM has forgotten, squeue says "Invalid job id specified" and exits 1: an answer.
    if done.returncode != 0 and "Invalid job id" not in done.stderr:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise QueueUnavailable(f"squeue failed: {reason}")
    return dict(line.split(maxsplit=1) for line in done.stdout.splitlines() if len(line.split()) == 2)


def queue_states(job_ids: Sequence[str]) -> dict[str, str]:
    """:func:`ask_queue` for display: empty when the queue cannot be asked."""
    try:
        return ask_queue(job_ids)
    except QueueUnavailable:
        return {}
