"""Whether a trial the ledger calls running still has a process: its heartbeat, and who can tell that it is gone.

A running trial's ``state.json`` names its host, its process id, its SLURM job (when it runs in one) and a heartbeat
time that the trial refreshes every :data:`HEARTBEAT_S` seconds while it trains. A trial whose process was killed
(SIGKILL, the OOM killer, a node that died) cannot say so itself, so readers decide, with the most precise witness
available:

1. SLURM, when the trial recorded a job and the queue can be asked: a job that left the queue or ended is gone; one
   that waits again (requeued) still owns the trial; a running job on this host is checked by its process id, since
   a local launcher inside an allocation shares the allocation's job id.
2. The process table, when the trial ran on this host: its pid must exist, must not be a zombie, and must have
   started before the trial said it was running (a recycled pid belongs to someone else).
3. The heartbeat, otherwise: silent for :data:`STALE_S` seconds means gone.

A trial found gone is shown as ``interrupted`` with the reason, and a relaunch resumes it from its checkpoint.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from lightning_depth.ablation import ledger
from lightning_depth.ablation.ledger import Ablation, TrialState
from lightning_depth.ablation.slurm_queue import ACTIVE_STATES, QueueUnavailable, ask_queue

HEARTBEAT_S = 30.0
# Ten heartbeats missed: long enough for a stalled shared filesystem or a few minutes of clock skew between nodes.
STALE_S = 10 * HEARTBEAT_S
# The pid of the local launch a trial belongs to, in the trial's environment (SLURM tasks have none).
LAUNCHER_ENV = "LIGHTNING_DEPTH_LAUNCHER_PID"


@dataclass(frozen=True)
class Owner:
    """Who holds a running trial (``alive``), or why nobody does any more."""

    alive: bool
    what: str


class Heartbeat:
    """Refreshes the trial's heartbeat from a background thread while the ``with`` block runs (the training)."""

    def __init__(self, trial_dir: str | os.PathLike, interval: float = HEARTBEAT_S) -> None:
        self.trial_dir = Path(trial_dir)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightning-depth-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        ledger.beat(self.trial_dir)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        # Stopped before the caller records the outcome, so a late beat never overwrites it.
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ledger.beat(self.trial_dir)
            except OSError:  # a full or unreachable disk: training goes on, readers fall back on the pid or the queue
                pass


def owner(state: TrialState, queue: Mapping[str, str] | None, now: datetime | None = None) -> Owner:
    """Who holds a trial whose state is running; ``queue`` is SLURM's answer for its job (None: not known)."""
    host = state.host or "an unknown host"
    here = state.host == socket.gethostname() and isinstance(state.pid, int)
    job = state.slurm_job
    if job and queue is not None:
        slurm_state = queue.get(str(job))
        if slurm_state is None:
            return Owner(False, f"job {job} left the queue")
        if slurm_state not in ACTIVE_STATES:
            return Owner(False, f"job {job} ended {slurm_state}")
        if slurm_state != "RUNNING" or not here:
            return Owner(True, f"job {job} is {slurm_state.lower()}")
    if here:
        if _process_alive(state.pid, _when(state.updated)):
            return Owner(True, f"pid {state.pid} on {host}")
        return Owner(False, f"pid {state.pid} on {host} is gone")
    last = _when(state.heartbeat) or _when(state.updated)
    silent = ((now or datetime.now(timezone.utc)) - last).total_seconds() if last else None
    if silent is not None and silent < STALE_S:
        return Owner(True, f"pid {state.pid} on {host}" + (f" (job {job})" if job else ""))
    since = f"since {last.strftime('%Y-%m-%d %H:%M')} UTC" if last else "ever"
    return Owner(False, f"no heartbeat from pid {state.pid} on {host} {since}")


def mark_interrupted(ablation: Ablation) -> dict[str, str] | None:
    """Set ``interrupted`` on every running trial whose process or job is gone; returns SLURM's answer for every job
    the trials recorded (None when the queue could not be asked, or no trial ran under SLURM)."""
    jobs = list(dict.fromkeys(str(t.state.slurm_job) for t in ablation.trials if t.state and t.state.slurm_job))
    queue = None
    if jobs:
        try:
            queue = ask_queue(jobs)
        except QueueUnavailable:
            queue = None
    for trial in ablation.trials:
        if trial.state is not None and trial.state.state == "running" and trial.status == "running":
            found = owner(trial.state, queue)
            if not found.alive:
                trial.interrupted = found.what
    return queue


def launcher_gone(grace_s: float = 0.0) -> bool:
    """Whether the local launch that started this trial has ended, waiting up to ``grace_s`` for it to. A killed
    launcher takes its trials with it (``PR_SET_PDEATHSIG``) and its W&B service too; a trial that meets the lost
    service in the moment between has not failed, it was interrupted."""
    pid = os.environ.get(LAUNCHER_ENV, "")
    if not pid.isdigit():
        return False
    deadline = time.monotonic() + grace_s
    while _process_alive(int(pid), None):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _when(text: str | None) -> datetime | None:
    try:
        when = datetime.fromisoformat(text) if text else None
    except (TypeError, ValueError):
        return None
    return when.replace(tzinfo=timezone.utc) if when is not None and when.tzinfo is None else when


def _process_alive(pid: int, running_since: datetime | None) -> bool:
    """Whether ``pid`` is a live process that started before ``running_since`` (Linux: from ``/proc``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    stat = Path(f"/proc/{pid}/stat")
    try:
        # The command name (field 2) may hold spaces and parentheses; the fields after its last ")" are plain.
        fields = stat.read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return True  # no /proc to ask: the pid exists, take it
    if fields[0] == "Z":  # killed, not yet collected by its parent
        return False
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    # state.json keeps whole seconds; a process that started after the trial said it was running is another one.
    return running_since is None or started <= running_since.timestamp() + 1.0
