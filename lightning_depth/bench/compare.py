"""compare: ``python -m lightning_depth compare`` as a user runs it (a fresh process: start-up, reading every trial,
the per-example analysis, the plots), on a finished ablation of 100 trials with 10,000 validation examples each,
against a budget of 10 seconds."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lightning_depth.ablation import ledger
from lightning_depth.ablation.spec import parse_spec, trial_id, trials
from lightning_depth.atomic import write_json
from lightning_depth.bench.timing import Config, Row, interleave, paired
from lightning_depth.evidence import TOP1, TOP5, evidence_path, save_evidence
from lightning_depth.metrics import RESULT_FILE

BUDGET_S = 10.0
ARMS = 5  # a factorial design of one five-level factor ...
SEEDS, EXAMPLES, EPOCHS = 20, 10_000, 30  # ... with 20 seeds each: 100 trials
QUICK = (5, 1_000, 5)  # seeds, examples, epochs at --quick sizes


def write_ablation(root: Path, seeds: int, examples: int, epochs: int) -> Path:
    """A finished ablation in the exact on-disk layout of real runs: ``ARMS`` arms, every trial with its result,
    its metrics.csv and its per-example evidence at the final and best epoch."""
    spec = parse_spec({"name": "width", "design": "factorial", "seeds": list(range(seeds)),
                       "factors": {"model.net.init_args.width": [16, 24, 32, 48, 64][:ARMS]},
                       "baseline": {"model.net.init_args.width": 16}})
    rng = np.random.default_rng(0)
    difficulty = rng.random(examples)  # an example's chance of being missed by an average run
    labels = rng.integers(0, 10, examples)
    ids = []
    for arm, seed in trials(spec):
        tid = trial_id(arm, seed, {"arm": arm.overrides})
        ids.append(tid)
        directory = ledger.trial_dir(root, tid)
        ledger.write_trial(directory, tid, arm, seed)
        level = list(spec.factors["model.net.init_args.width"]).index(arm.overrides["model.net.init_args.width"])
        miss = difficulty * (0.2 - 0.01 * level) * 2 > rng.random(examples)
        top5 = ~miss | (rng.random(examples) < 0.7)
        pred = np.where(miss, (labels + 1) % 10, labels)
        flags = (~miss).astype(np.uint8) * TOP1 + top5.astype(np.uint8) * TOP5
        for name in ("val_final", "val_best"):
            save_evidence(evidence_path(directory, name), np.arange(examples), pred, flags, epochs - 1, "val")
        acc = float(np.mean(~miss))
        _write_curves(directory / "csv" / "version_0" / "metrics.csv", acc, epochs)
        write_json(directory / RESULT_FILE, {
            "metrics": {"val/acc1": {"final": acc, "best": acc}, "val/acc5": {"final": float(top5.mean()),
                                                                              "best": float(top5.mean())},
                        "val/loss": {"final": 1 - acc, "best": 1 - acc}, "train/loss": {"final": 0.9 - acc,
                                                                                         "best": 0.9 - acc}},
            "params": 270_000 * (level + 1), "macs": 40_000_000 * (level + 1), "wall_time_s": 600.0,
            "epochs": epochs, "global_step": epochs * 390})
        ledger.mark_done(directory)
    ledger.write_ablation(root, spec, ids)
    return root


def _write_curves(path: Path, final: float, epochs: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "step", "train/loss", "val/acc1", "val/loss"])
        for epoch in range(epochs):
            acc = final - 0.3 * (epochs - 1 - epoch) / epochs
            writer.writerow([epoch, (epoch + 1) * 390 - 1, 0.9 - acc, "", ""])
            writer.writerow([epoch, (epoch + 1) * 390 - 1, "", acc, 1 - acc])


def measure(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    seeds, examples, epochs = QUICK if cfg.quick else (SEEDS, EXAMPLES, EPOCHS)
    root = write_ablation(tmp / "compare" / "width", seeds, examples, epochs)
    env = {**os.environ, "OMP_NUM_THREADS": str(max(cfg.threads, 1)), "MPLBACKEND": "Agg"}
    failures: list[str] = []

    def run() -> float:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "lightning_depth", "compare", str(root), "--format", "json"],
                              capture_output=True, text=True, env=env, timeout=max(deadline - time.monotonic(), 120))
        if done.returncode != 0:
            failures.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        return time.perf_counter() - start

    times = interleave({"compare": run}, deadline, cfg.rounds)["compare"]
    title = (f"compare, {ARMS * seeds} trials x {examples:,} val examples (fresh process, plots included) / "
             f"{BUDGET_S:.0f} s")
    if failures:
        return [Row("compare", title, None, None, "s", None, note=f"compare failed: {failures[0]}")]
    return [paired("compare", title, times, [BUDGET_S] * len(times), goal=1.0)]
