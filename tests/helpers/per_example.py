"""Ablation directories whose trials kept per-example evidence, in the exact on-disk format of real runs, built from
a known correctness matrix per trial, so every count and difference in the comparison is known in advance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lightning_depth.evidence import TOP1, TOP5, evidence_path, save_evidence

N_EXAMPLES = 360  # the size of the embedded digits' validation split
SEEDS = (0, 1, 2)


def wrong_on(*examples: int) -> np.ndarray:
    """Correctness over the validation split: right on every example except those given."""
    correct = np.ones(N_EXAMPLES, dtype=bool)
    correct[list(examples)] = False
    return correct


# The baseline misses examples 0-9 and one example of its own per seed (20 + seed).
BASELINE = {s: wrong_on(*range(10), 20 + s) for s in SEEDS}
# "better" gets 6, 4 and 8 of those ten right (by seed) and misses one the baseline had right (200 + seed):
# per seed Δ = +5, +3, +7 examples of 360; over the three seeds 18 wrong → right and 3 right → wrong.
BETTER = {s: wrong_on(*range((6, 4, 8)[s], 10), 20 + s, 200 + s) for s in SEEDS}
# "same" trades one example for another per seed: Δ = 0 in every seed, 3 flips each way.
SAME = {s: wrong_on(*range(10), 40 + s) for s in SEEDS}
ARMS = {"baseline": BASELINE, "better": BETTER, "same": SAME}


def write_trial(root: Path, arm: str, seed: int, correct: np.ndarray, evidence: bool = True) -> str:
    tid = f"{arm}-s{seed}"
    d = root / tid
    d.mkdir(parents=True)
    (d / "trial.json").write_text(json.dumps({"id": tid, "arm": arm, "seed": seed,
                                              "overrides": {"model.variant": arm}, "is_baseline": arm == "baseline"}))
    (d / "state.json").write_text(json.dumps({"state": "done", "reason": None, "attempts": 1}))
    acc = float(np.mean(correct))
    (d / "result.json").write_text(json.dumps({
        "metrics": {"val/acc1": {"final": acc, "best": acc}, "val/loss": {"final": 1 - acc, "best": 1 - acc}},
        "params": 1000, "macs": 2000, "wall_time_s": 60.0, "epochs": 2}))
    if evidence:
        labels = np.arange(correct.size) % 10
        pred = np.where(correct, labels, (labels + 1) % 10)
        flags = correct.astype(np.uint8) * TOP1 + TOP5
        for name in ("val_final", "val_best"):
            save_evidence(evidence_path(d, name), np.arange(correct.size), pred, flags, 1, "val")
    return tid


def make_evidence_ablation(root: Path, arms: dict[str, dict[int, np.ndarray]] | None = None,
                           evidence: bool = True) -> Path:
    """One trial per (arm, seed) with ``val/acc1`` = the mean of its correctness, and its evidence files."""
    arms = arms or ARMS
    root.mkdir(parents=True, exist_ok=True)
    ids = [write_trial(root, arm, seed, correct, evidence) for arm, by_seed in arms.items()
           for seed, correct in by_seed.items()]
    (root / "ablation.json").write_text(json.dumps({
        "name": "toy", "design": "one_at_a_time", "metric": "val/acc1", "baseline": "baseline",
        "factors": {"model.variant": list(arms)}, "trials": ids}))
    return root
