"""Run trials as local processes: one process per trial, N at a time (one per GPU, or CPU slots).

Each trial runs ``python -m lightning_depth trial DIR``, the command every launcher runs, in its own process: its own
CUDA context, its own DDP group when it uses several devices, its own exit code, so one failure cannot take the
others down. By default the process is a fork of a fork server (:mod:`~lightning_depth.ablation.forkserver`) that
has already imported torch, Lightning, torchmetrics and W&B, and every trial logs through one W&B service that the
launcher starts; ``fork_server=False`` starts a fresh interpreter per trial instead, each with its own W&B service,
exactly as a SLURM array task runs it. Either way children die with the launcher (PR_SET_PDEATHSIG), so a killed
sweep never leaves a trial writing checkpoints that the relaunched sweep would also write.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightning_depth.ablation import ledger, liveness
from lightning_depth.ablation.forkserver import ForkServer, die_with_parent
from lightning_depth.errors import UsageError

TRIAL_MODULE, TRIAL_COMMAND = "lightning_depth", "trial"
SUMMARY = re.compile(r"^sweep: (\d+) trials? in ([\d.]+) s(?:, ([\d.]+) s of it training; start-up ([\d.]+) s)?",
                     re.MULTILINE)


def gpu_count() -> int:
    """The CUDA devices this process may give to trials (0 without torch's CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def cpu_threads(parallel: int) -> int:
    """A CPU slot's share of the cores: the intra-op threads of each trial when ``parallel`` trials share them."""
    return max(1, (os.cpu_count() or 1) // parallel)


def slot_env(slot: int, parallel: int, gpus: int) -> dict[str, str]:
    """Environment of the trial in ``slot``: its GPU, or its share of the CPU threads.

    The slots take turns over the GPUs this process may use: the entries of ``CUDA_VISIBLE_DEVICES`` when the user
    set it (indices, UUIDs or MIG names, kept as written), else the ``gpus`` devices it sees. A GPU left out of
    ``CUDA_VISIBLE_DEVICES`` is never given to a trial.
    """
    env = {**os.environ, liveness.LAUNCHER_ENV: str(os.getpid())}
    if gpus and parallel > 1:
        given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        visible = given[:gpus] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = visible[slot % len(visible)] if visible else ""
    if parallel > 1:
        threads = str(cpu_threads(parallel))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


class Forks:
    """Each trial a fork of the fork server; all of them log through the launcher's W&B service."""

    def __init__(self) -> None:
        self.server = ForkServer()

    def start(self, key: int, trial: Path, env: dict[str, str]) -> None:
        self.server.start(key, TRIAL_MODULE, [TRIAL_COMMAND, str(trial)], env, trial / "log.txt")

    def poll(self, key: int) -> int | None:
        return self.server.poll(key)

    def wait(self, seconds: float) -> None:
        self.server.wait(seconds)

    def kill(self, key: int) -> None:
        self.server.kill(key)

    def close(self) -> None:
        self.server.close()

    @property
    def how(self) -> str:
        return f"forks of a fork server, {self.server.how}"


@dataclass
class Processes:
    """Each trial a fresh interpreter with its own W&B service, as a SLURM array task runs it."""

    procs: dict[int, subprocess.Popen] = field(default_factory=dict)
    how: str = "a fresh interpreter per trial"

    def start(self, key: int, trial: Path, env: dict[str, str]) -> None:
        with open(trial / "log.txt", "ab") as log:
            self.procs[key] = subprocess.Popen([sys.executable, "-m", TRIAL_MODULE, TRIAL_COMMAND, str(trial)],
                                               stdout=log, stderr=subprocess.STDOUT, env=env,
                                               preexec_fn=die_with_parent)

    def poll(self, key: int) -> int | None:
        return self.procs[key].poll()

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def kill(self, key: int) -> None:
        self.procs[key].kill()

    def close(self) -> None:
        pass


def runner(fork_server: bool) -> Forks | Processes:
    """What starts trials: forks of a fork server (forked now: call this before anything here computes) whose trials
    share this process's W&B service, or a fresh interpreter per trial."""
    if not fork_server:
        return Processes()
    forks = Forks()
    share_wandb_service()
    return forks


def share_wandb_service() -> None:
    """Start the W&B service in this process, so that every trial's W&B run goes through it instead of starting
    one of its own: W&B puts its address in ``WANDB_SERVICE``, which the trials' environments carry, and a process
    that finds it there connects rather than starting a service (W&B's documented way for child processes). The
    service ends with this process; each trial finishes its own run first, so a killed launcher loses nothing a
    finished trial logged."""
    if os.environ.get("WANDB_MODE") == "disabled" or os.environ.get("WANDB_SERVICE"):
        return
    try:
        import wandb

        wandb.setup()
    except Exception as err:  # noqa: BLE001 - without it each trial starts its own service, as before
        print(f"W&B service not shared ({str(err).strip().splitlines()[0][:160] if str(err).strip() else err!r}); "
              "each trial starts its own", file=sys.stderr)


def launch(trial_dirs: list[Path], parallel: int = 1, metric: str = "val/acc1", fork_server: bool = True) -> bool:
    """Run every trial; True when all of them finished. Prints one line per start and finish, and a summary of the
    time the sweep took beyond its training."""
    if parallel < 1:
        raise UsageError(f"--parallel {parallel}: must be at least 1")
    queue = list(trial_dirs)
    if not queue:
        return True
    began = time.perf_counter()
    starter = runner(fork_server)
    gpus = gpu_count()
    if gpus and parallel > gpus:
        print(f"--parallel {parallel} with {gpus} GPU(s): trials will share GPUs", file=sys.stderr)
    running: dict[int, tuple[int, Path, float]] = {}
    spent: list[tuple[Path, float]] = []
    total, finished, all_ok, key = len(queue), 0, True, 0
    try:
        while queue or running:
            free = [s for s in range(parallel) if s not in running]
            while queue and free:
                slot, trial = free.pop(0), queue.pop(0)
                key += 1
                starter.start(key, trial, slot_env(slot, parallel, gpus))
                running[slot] = (key, trial, time.perf_counter())
                print(f"[{finished}/{total}] start  {trial.name}", file=sys.stderr, flush=True)
            starter.wait(0.2)
            for slot, (k, trial, start) in list(running.items()):
                code = starter.poll(k)
                if code is None:
                    continue
                del running[slot]
                finished += 1
                all_ok &= code == 0
                spent.append((trial, time.perf_counter() - start))
                print(f"[{finished}/{total}] {_outcome(trial, code, metric)}  {trial.name} "
                      f"({spent[-1][1]:.0f} s)", file=sys.stderr, flush=True)
    finally:
        starter.close()
    print(summary(spent, time.perf_counter() - began, starter.how), file=sys.stderr, flush=True)
    return all_ok


def summary(spent: list[tuple[Path, float]], wall_s: float, how: str) -> str:
    """``sweep: N trials in W s, T s of it training; start-up S s per trial (median); how``: the wall time from
    the launch to the last trial's end, the trials' fit time (``result.json``), and the median of what each trial's
    process took besides its fit (starting, importing, parsing, reading the data, W&B, exiting)."""
    trained, startups = 0.0, []
    for trial, seconds in spent:
        fit_s = (ledger.read_result(trial) or {}).get("wall_time_s")
        # A resumed trial's fit time includes its earlier attempts, so it says nothing about this start-up.
        if isinstance(fit_s, (int, float)) and 0 <= fit_s <= seconds:
            trained += fit_s
            startups.append(seconds - fit_s)
    line = f"sweep: {len(spent)} trial{'s' if len(spent) != 1 else ''} in {wall_s:.1f} s"
    if startups:
        line += (f", {trained:.1f} s of it training; start-up {statistics.median(startups):.2f} s per trial "
                 "(median)")
    return f"{line}; {how}"


def parse_summary(text: str) -> dict[str, float] | None:
    """The numbers of the last :func:`summary` line in ``text``: trials, wall_s, and training_s and startup_s
    where the trials had results."""
    found = SUMMARY.findall(text)
    if not found:
        return None
    trials, wall, training, startup = found[-1]
    out = {"trials": float(trials), "wall_s": float(wall)}
    if training:
        out.update(training_s=float(training), startup_s=float(startup))
    return out


def _outcome(trial: Path, code: int, metric: str) -> str:
    try:
        state = ledger.read_state(trial)
    except ValueError as err:  # damaged by hand while the trial ran: say so, and the sweep goes on
        return f"FAILED ({err})"
    if code == ledger.ALREADY_RUNNING_EXIT:
        return "not started: another process holds it (see its state.json)"
    if code == 0 and state is not None and state.state == "done":
        result = ledger.read_result(trial) or {}
        entry = (result.get("metrics") or {}).get(metric) or {}
        best = entry.get("best", entry.get("final"))
        return f"done   {metric} {best:.4f}" if isinstance(best, (int, float)) else "done  "
    reason = state.reason if state is not None and state.reason else f"exit code {code}; see {trial / 'log.txt'}"
    return f"FAILED ({reason})"
