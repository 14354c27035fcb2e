"""Collecting an ablation's results: every arm as mean ± std over seeds, with seed-paired deltas to the baseline.

Reads only the trial directories (``result.json``, ``state.json``), so it works offline, on partial results while
trials are still running, and from any machine that sees the directory. :mod:`render` turns a :class:`Report` into
text, :mod:`plots` into figures.

Every number says what it rests on: per arm the values used (``n``) and the trials in each state, per Δ the seed
pairs, and whether the means and the Δ rest on the same seeds. A running trial whose process or job is gone counts
as interrupted (:mod:`liveness`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from lightning_depth.ablation.ledger import SHOWN_STATES, Ablation, Trial, find_ablation, load_ablation
from lightning_depth.ablation.liveness import mark_interrupted
from lightning_depth.ablation.stats import CI_LABEL, mean_std, paired_delta
from lightning_depth.errors import UsageError
from lightning_depth.evidence import SOURCES, evidence_path, load_evidence
from lightning_depth.metrics import BEST_SUFFIX


@dataclass
class MetricStats:
    """One metric of one arm: mean ± std over its trials, and the paired delta to the baseline (None for it)."""

    mean: float
    std: float
    n: int
    delta: float | None = None
    ci95: tuple[float, float] | None = None
    n_paired: int = 0
    # The means (this arm's and the baseline's) use exactly the seeds the Δ pairs; False when either has others.
    same_seeds: bool = True
    pairs_equal: bool = False  # every paired difference is the same: no interval (stats.paired_delta)


@dataclass
class ArmReport:
    """One arm: state counts, model size and cost, and statistics for every metric its results contain."""

    name: str
    is_baseline: bool
    counts: dict[str, int]  # trials per state (ledger.SHOWN_STATES)
    params: int | None = None
    macs: int | None = None
    wall_time_s: float | None = None
    metrics: dict[str, MetricStats] = field(default_factory=dict)
    n: int = 0  # values of the report's metric the arm's numbers rest on (a done trial may lack it)

    @property
    def unfinished(self) -> int:
        """Trials without an outcome yet: pending, running or interrupted."""
        return sum(self.counts.get(s, 0) for s in SHOWN_STATES if s not in ("done", "diverged", "failed"))


@dataclass
class Report:
    """A comparison of every arm of one ablation on one metric; ``keys`` orders the metrics (the chosen one first)."""

    ablation: Ablation
    metric: str
    baseline: str | None
    arms: list[ArmReport]
    keys: list[str]
    percent: set[str]
    totals: dict[str, int]
    ci: str = CI_LABEL
    examples: dict[str, int] = field(default_factory=dict)  # accuracy key -> examples it is measured on, where known


def build_report(ablation_dir: str | os.PathLike, metric: str | None = None) -> Report:
    """Collect every arm's results; ``metric`` defaults to the ablation's own (``val/acc1`` unless it chose another)."""
    ablation = load_ablation(find_ablation(ablation_dir))
    mark_interrupted(ablation)
    metric = metric or ablation.metric
    values = {t.id: _trial_values(t) for t in ablation.trials if t.status == "done"}
    keys = _ordered_keys(metric, {k for v in values.values() for k in v})
    if values and metric not in keys and metric + BEST_SUFFIX not in keys:
        raise UsageError(f"metric {metric} is in no result.json; available: {', '.join(sorted(keys))}")
    by_arm = {arm: [t for t in ablation.trials if t.arm == arm] for arm in ablation.arms}
    baseline = ablation.baseline if ablation.baseline in by_arm else None
    base_values = _per_seed(by_arm.get(baseline, []), values)
    arms = []
    for name, trials in by_arm.items():
        per_key = _per_seed(trials, values)
        arm = ArmReport(name, name == baseline, _counts(trials))
        done = [t for t in trials if t.id in values]
        arm.params = next((int(t.result["params"]) for t in done if _is_num(t.result.get("params"))), None)
        arm.macs = next((int(t.result["macs"]) for t in done if _is_num(t.result.get("macs"))), None)
        walls = [float(t.result["wall_time_s"]) for t in done if _is_num(t.result.get("wall_time_s"))]
        arm.wall_time_s = sum(walls) / len(walls) if walls else None
        for key in keys:
            arm.metrics[key] = _metric_stats(per_key.get(key, {}), base_values.get(key, {}), name == baseline)
        shown = arm.metrics.get(metric) or arm.metrics.get(metric + BEST_SUFFIX)
        arm.n = shown.n if shown is not None else 0
        arms.append(arm)
    percent = {k for k in keys if is_fraction_accuracy(k, [v[k] for v in values.values() if k in v])}
    done = [t for t in ablation.trials if t.id in values]
    return Report(ablation, metric, baseline, arms, keys, percent, _counts(ablation.trials),
                  examples=_examples(done, percent))


def _examples(done: list[Trial], keys: set[str]) -> dict[str, int]:
    """How many examples each accuracy was measured on, from the first finished trial that kept per-example
    evidence: one example is then 1/N of the accuracy, the resolution of every number in its column."""
    out = {}
    for key in keys:
        for trial in done:
            source = SOURCES.get(key)
            evidence = load_evidence(evidence_path(trial.dir, source[0])) if source else None
            if evidence is not None:
                out[key] = int(evidence.index.size)
                break
    return out



def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _trial_values(trial: Trial) -> dict[str, float]:
    """``result.json`` flattened: ``metric`` -> final value, ``metric_best`` -> best value."""
    metrics = (trial.result or {}).get("metrics") or {}
    out = {m: float(e["final"]) for m, e in metrics.items() if isinstance(e, dict) and _is_num(e.get("final"))}
    # A "best" recorded beside the final value wins over a separately logged "<metric>_best".
    out.update({m + BEST_SUFFIX: float(e["best"]) for m, e in metrics.items()
                if isinstance(e, dict) and _is_num(e.get("best"))})
    return out


def _ordered_keys(metric: str, keys: set[str]) -> list[str]:
    """The chosen metric and its best first, then validation, test and training metrics, each alphabetically."""
    first = [k for k in (metric, metric + BEST_SUFFIX) if k in keys]
    split = {"val": 0, "test": 1, "train": 2}
    rest = sorted(set(keys) - set(first), key=lambda k: (split.get(k.split("/", 1)[0], 3), k))
    return first + rest


def _per_seed(trials: list[Trial], values: dict[str, dict[str, float]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for trial in trials:
        for key, value in values.get(trial.id, {}).items():
            out.setdefault(key, {})[int(trial.seed if trial.seed is not None else -1)] = value
    return out


def _metric_stats(arm: dict[int, float], baseline: dict[int, float], is_baseline: bool) -> MetricStats:
    summary = mean_std(arm.values())
    stats = MetricStats(summary.mean, summary.std, summary.n)
    delta = None if is_baseline else paired_delta(arm, baseline)
    if delta is not None:
        stats.delta, stats.ci95, stats.n_paired = delta.mean, delta.ci, delta.n
        stats.same_seeds = set(arm) == set(baseline) == set(delta.seeds)
        stats.pairs_equal = delta.equal
    return stats


def _counts(trials: list[Trial]) -> dict[str, int]:
    return {state: sum(t.status == state for t in trials) for state in SHOWN_STATES}


def is_fraction_accuracy(key: str, values: list[float]) -> bool:
    """Accuracies logged as fractions are shown in percent; anything already above 1 was logged in percent."""
    return "acc" in key.rsplit("/", 1)[-1] and bool(values) and all(0.0 <= v <= 1.0 for v in values)

