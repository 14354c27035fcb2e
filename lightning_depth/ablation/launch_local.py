"""Run trials as local processes: one process per trial, N at a time (one per GPU, or CPU slots).

Each trial is ``python -m lightning_depth trial DIR`` with the Python that launched the ablation, so a trial is
isolated (its own CUDA context, its own DDP group when it uses several devices) and one failure cannot take the
others down. Children die with the launcher (PR_SET_PDEATHSIG), so a killed sweep never leaves a trial writing
checkpoints that the relaunched sweep would also write.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lightning_depth.ablation import ledger

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the trial lock still prevents two writers
        pass


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def slot_env(slot: int, parallel: int, gpus: int) -> dict[str, str]:
    """Environment of the trial in ``slot``: its GPU, or its share of the CPU threads."""
    env = dict(os.environ)
    if gpus and parallel > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    if parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def launch(trial_dirs: list[Path], parallel: int = 1, metric: str = "val/acc1") -> bool:
    """Run every trial; True when all of them finished. Prints one line per start and finish."""
    if parallel < 1:
        from lightning_depth.errors import UsageError

        raise UsageError(f"--parallel {parallel}: must be at least 1")
    gpus = _gpu_count()
    if gpus and parallel > gpus:
        print(f"--parallel {parallel} with {gpus} GPU(s): trials will share GPUs", file=sys.stderr)
    queue = list(trial_dirs)
    running: dict[int, tuple[subprocess.Popen, Path, float]] = {}
    total, finished, all_ok = len(queue), 0, True
    while queue or running:
        free = [s for s in range(parallel) if s not in running]
        while queue and free:
            slot, trial = free.pop(0), queue.pop(0)
            log = open(trial / "log.txt", "ab")
            proc = subprocess.Popen([sys.executable, "-m", "lightning_depth", "trial", str(trial)],
                                    stdout=log, stderr=subprocess.STDOUT, env=slot_env(slot, parallel, gpus),
                                    preexec_fn=_die_with_parent)
            log.close()
            running[slot] = (proc, trial, time.perf_counter())
            print(f"[{finished}/{total}] start  {trial.name}", file=sys.stderr, flush=True)
        time.sleep(0.2)
        for slot, (proc, trial, start) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[slot]
            finished += 1
            all_ok &= code == 0
            print(f"[{finished}/{total}] {_outcome(trial, code, metric)}  {trial.name} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return all_ok


def _outcome(trial: Path, code: int, metric: str) -> str:
    state = ledger.read_state(trial)
    if code == 0 and state is not None and state.state == "done":
        result = ledger.read_result(trial) or {}
        entry = (result.get("metrics") or {}).get(metric) or {}
        best = entry.get("best", entry.get("final"))
        return f"done   {metric} {best:.4f}" if isinstance(best, (int, float)) else "done  "
    reason = state.reason if state is not None and state.reason else f"exit code {code}; see {trial / 'log.txt'}"
    return f"FAILED ({reason})"
