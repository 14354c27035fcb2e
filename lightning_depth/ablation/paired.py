"""Each arm against the baseline with every piece of evidence a run keeps: seeds and validation examples.

Both arms of an ablation are evaluated on the same examples with the same seeds, so for one metric the comparison
is a matrix ``D[seed, example] = correct(arm) - correct(baseline)`` (each entry -1, 0 or +1). What this module
computes from it, and why (docs/statistics.md explains it with a worked example):

- a **two-level bootstrap** interval for the mean of ``D``: each resample draws the seeds with replacement, then the
  examples with replacement, and keeps the pairing (a drawn seed and example contribute the difference of the two
  arms for that very seed and example). Seeds and examples are crossed, not nested: every seed saw every example,
  so one draw of examples serves all drawn seeds. It rests on S × E paired outcomes, where the seed-paired t
  interval rests on S numbers.
- **flips**: how many (seed, example) pairs the baseline got right and the arm wrong, and the other way round.
- a **seeds advisor**: how many seeds resolve a difference at 95% confidence with 80% power, from the exact power
  of the paired t test (noncentral t) with the observed spread of per-seed differences, and for the per-example
  interval from the variance components of ``D``.
- **Holm's adjustment** of the p-values when several arms are compared with one baseline.

Only examples where the arms differ under some seed move the bootstrap mean, so the cost of a resample grows with
their number (or with the number of seeds), never with the size of the validation set (:func:`bootstrap_means`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lightning_depth.ablation.ledger import Trial
from lightning_depth.ablation.report import Report
from lightning_depth.evidence import SOURCES, Evidence, evidence_path, load_evidence
from lightning_depth.metrics import BEST_SUFFIX

RESAMPLES = 4000  # bootstrap resamples: the 2.5% and 97.5% points then move by well under a tenth of the interval
CONFIDENCE = 0.95
POWER = 0.80
MOST_SEEDS = 1000  # the advisor's ceiling; beyond it the answer is "this difference is out of reach"
EXACT_EXAMPLES = 128  # examples that differ between the arms up to which the example draw is exact (its cost grows)
LABEL = "two-level bootstrap over seeds and examples, 95%"


# -- statistics on one difference matrix ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """The mean difference, its percentile interval and a two-sided p-value from the resampled means."""

    delta: float
    ci: tuple[float, float]
    p: float


@dataclass(frozen=True)
class Components:
    """Variance components of ``D`` (method of moments, crossed seeds × examples; negative estimates become 0).

    ``seed``: how much an arm's advantage moves from seed to seed; ``example``: how much it differs between
    examples; ``residual``: the seed-by-example part (an example that flips under one seed and not under another).
    """

    seed: float
    example: float
    residual: float


def two_level_bootstrap(diffs: np.ndarray, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                        seed: int = 0) -> Bootstrap:
    """Percentile interval for the mean of ``diffs`` (seeds × examples), resampling seeds, then examples."""
    diffs = np.atleast_2d(np.asarray(diffs, dtype=float))
    return summarise(float(diffs.mean()), bootstrap_means(diffs, resamples, np.random.default_rng(seed)), confidence)


def summarise(delta: float, means: np.ndarray, confidence: float = CONFIDENCE) -> Bootstrap:
    """The percentile interval of resampled means, and twice the share of them on the far side of zero (+1 so a
    finite number of resamples never claims p = 0) as a two-sided p-value."""
    low, high = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    below, above = int(np.sum(means <= 0)), int(np.sum(means >= 0))
    p = min(1.0, 2 * (min(below, above) + 1) / (means.size + 1))
    return Bootstrap(delta, (float(low), float(high)), p)


def bootstrap_means(diffs: np.ndarray, resamples: int, rng: np.random.Generator,
                    exact_up_to: int = EXACT_EXAMPLES) -> np.ndarray:
    """The mean of ``diffs`` (seeds × examples) in each of ``resamples`` two-level resamples.

    A resample draws S seeds with replacement (multinomial weights ``w``), then E examples with replacement; each
    drawn example contributes its column of differences weighted by ``w``. Only examples whose column is not all
    zeros move the mean, and examples with the same column are interchangeable, so when at most ``exact_up_to``
    examples move it the draw is an exact multinomial over their distinct columns, whatever E is. When more move it,
    the drawn examples' mean is taken as normal with the exact mean and variance the draw gives it: a sum over
    hundreds of moving examples is as normal as the central limit theorem makes anything.
    """
    diffs = np.atleast_2d(np.asarray(diffs))
    n_seeds, n_examples = diffs.shape
    # How often each seed is drawn: the multinomial counts of S draws, as one bincount over all resamples.
    drawn_seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds)) + n_seeds * np.arange(resamples)[:, None]
    seeds = np.bincount(drawn_seeds.ravel(), minlength=resamples * n_seeds).reshape(resamples, n_seeds)
    moving = diffs[:, np.any(diffs != 0, axis=0)].astype(np.float64)
    if moving.shape[1] <= exact_up_to:
        columns, sizes = np.unique(moving.T, axis=0, return_counts=True)
        # The last category is every example whose column is all zeros; numpy gives it the remaining probability.
        drawn = rng.multinomial(n_examples, np.append(sizes / n_examples, 0.0), size=resamples)[:, :-1]
        return ((drawn @ columns) * seeds).sum(axis=1) / (n_seeds * n_examples)
    # Given the seed weights w, an example's value is w·d/S; its mean and second moment over the E examples are
    # w·r/S and wᵀGw/S², with r the per-seed means and G the examples' mean outer product.
    r, gram = moving.sum(axis=1) / n_examples, moving @ moving.T / n_examples
    mean = seeds @ r / n_seeds
    var = np.maximum(((seeds @ gram) * seeds).sum(axis=1) / n_seeds**2 - mean**2, 0.0)
    return mean + np.sqrt(var / n_examples) * rng.standard_normal(resamples)


def components(diffs: np.ndarray) -> Components | None:
    """Variance components of a seeds × examples matrix; None with fewer than two seeds or two examples."""
    d = np.asarray(diffs, dtype=float)
    s, e = d.shape
    if s < 2 or e < 2:
        return None
    grand, rows, cols = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ss_seed = e * float(np.sum((rows - grand) ** 2))
    ss_example = s * float(np.sum((cols - grand) ** 2))
    ss_residual = max(float(np.sum((d - grand) ** 2)) - ss_seed - ss_example, 0.0)
    ms_seed, ms_example = ss_seed / (s - 1), ss_example / (e - 1)
    ms_residual = ss_residual / ((s - 1) * (e - 1))
    return Components(seed=max((ms_seed - ms_residual) / e, 0.0), example=max((ms_example - ms_residual) / s, 0.0),
                      residual=ms_residual)


def flips(diffs: np.ndarray) -> tuple[int, int]:
    """(baseline right → arm wrong, baseline wrong → arm right), counted over every paired (seed, example)."""
    d = np.asarray(diffs)
    return int(np.sum(d < 0)), int(np.sum(d > 0))


# -- seeds advisor and p-values -----------------------------------------------------------------------------------


def paired_t_power(n: np.ndarray | int, sd: float, effect: float, confidence: float = CONFIDENCE) -> np.ndarray:
    """Exact power of the two-sided paired t test with ``n`` seeds when the true mean difference is ``effect`` and
    per-seed differences spread with standard deviation ``sd`` (noncentral t)."""
    from scipy.special import nctdtr, stdtrit

    n = np.asarray(n, dtype=float)
    crit = stdtrit(n - 1, 1 - (1 - confidence) / 2)
    shift = abs(effect) * np.sqrt(n) / sd
    return 1 - nctdtr(n - 1, shift, crit) + nctdtr(n - 1, shift, -crit)


def seeds_for_t(sd: float, effect: float, confidence: float = CONFIDENCE, power: float = POWER,
                most: int = MOST_SEEDS) -> int | None:
    """Fewest seeds (at least 2) whose paired t test finds ``effect`` with ``power``; None beyond ``most``."""
    if not effect or not math.isfinite(effect) or not math.isfinite(sd):
        return None
    if sd == 0:
        return 2
    # Blocks of growing size, smallest n first: the noncentral t loses accuracy far beyond the answer, never near it.
    start = 2
    while start <= most:
        n = np.arange(start, min(4 * start, most) + 1)
        enough = np.flatnonzero(paired_t_power(n, sd, effect, confidence) >= power)
        if enough.size:
            return int(n[enough[0]])
        start = int(n[-1]) + 1
    return None


def _room(parts: Components, n_examples: int, effect: float, confidence: float, power: float) -> float:
    """The variance of the mean that still resolves ``effect``, less the examples' own share (which seeds cannot
    reduce): ``(effect / (z_{1-α/2} + z_power))² - example / E``."""
    from scipy.special import ndtri

    z = float(ndtri(1 - (1 - confidence) / 2) + ndtri(power))
    return (effect / z) ** 2 - parts.example / n_examples


def examples_limit(parts: Components, n_examples: int, effect: float, confidence: float = CONFIDENCE,
                   power: float = POWER) -> bool:
    """Whether the examples alone vary too much to resolve ``effect`` at any number of seeds."""
    return _room(parts, n_examples, effect, confidence, power) <= 0


def seeds_for_examples(parts: Components, n_examples: int, effect: float, confidence: float = CONFIDENCE,
                       power: float = POWER, most: int = MOST_SEEDS) -> int | None:
    """Fewest seeds (at least 2) for which the per-example interval resolves ``effect`` (normal approximation):
    the variance of the mean is seed/n + example/E + residual/(n·E). None when the examples' own share alone is too
    large (no number of seeds helps; more examples would, see :func:`examples_limit`) or beyond ``most``."""
    if not effect or not math.isfinite(effect):
        return None
    room = _room(parts, n_examples, effect, confidence, power)
    if room <= 0:
        return None
    n = max(2, math.ceil((parts.seed + parts.residual / n_examples) / room - 1e-12))
    return n if n <= most else None


def paired_t_p(diffs: Sequence[float]) -> float | None:
    """Two-sided p-value of the paired t test on per-seed differences; None with < 2 seeds or no spread."""
    from scipy.special import stdtr

    x = np.asarray(diffs, dtype=float)
    if x.size < 2 or float(np.std(x, ddof=1)) == 0:
        return None
    t = float(np.mean(x)) / (float(np.std(x, ddof=1)) / math.sqrt(x.size))
    return float(2 * stdtr(x.size - 1, -abs(t)))


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment over one family (the arms compared with one baseline on one metric): the k-th
    smallest of m p-values is multiplied by m - k + 1, and adjusted values never decrease. Undefined p-values stay
    undefined but count in m."""
    m = len(pvalues)
    ordered = sorted((p, name) for name, p in pvalues.items() if p is not None)
    out: dict[str, float | None] = {name: None for name in pvalues}
    running = 0.0
    for k, (p, name) in enumerate(ordered):
        running = max(running, min(1.0, (m - k) * p))
        out[name] = running
    return out


# -- an ablation's comparisons ------------------------------------------------------------------------------------


@dataclass
class PerExample:
    """One arm against the baseline on one accuracy, example by example."""

    delta: float
    ci95: tuple[float, float]
    p: float
    n_examples: int
    n_seeds: int
    flips: tuple[int, int]
    seeds_needed: int | None = None
    why: str | None = None  # why seeds_needed is None
    p_holm: float | None = None


@dataclass
class Comparison:
    """One arm against the baseline on one metric: seed-level test, seeds advice, and the per-example analysis."""

    arm: str
    key: str
    n_seeds: int
    effect: float | None  # the difference the advice is sized for: the observed Δ or the one named
    effect_named: bool
    sd: float  # standard deviation of the per-seed differences (NaN with fewer than two seeds)
    seeds_needed: int | None
    why: str | None  # why seeds_needed is None
    p: float | None
    p_holm: float | None = None
    per_example: PerExample | None = None


@dataclass
class Analysis:
    """Every (arm, metric) comparison of a report; ``arms_compared`` non-baseline arms share one baseline."""

    comparisons: dict[tuple[str, str], Comparison] = field(default_factory=dict)
    arms_compared: int = 0
    min_effect: float | None = None  # in percentage points for accuracies
    resamples: int = RESAMPLES

    def get(self, arm: str, key: str) -> Comparison | None:
        return self.comparisons.get((arm, key))

    @property
    def per_example_keys(self) -> list[str]:
        return list(dict.fromkeys(k for (_, k), c in self.comparisons.items() if c.per_example is not None))


def analyse(report: Report, min_effect: float | None = None, resamples: int = RESAMPLES, seed: int = 0) -> Analysis:
    """Compare every non-baseline arm of ``report`` with its baseline on every metric; ``min_effect`` is the
    difference the seeds advisor sizes for, in percentage points for accuracies (default: the observed Δ)."""
    analysis = Analysis(min_effect=min_effect, resamples=resamples)
    if report.baseline is None:
        return analysis
    done = {arm.name: {int(t.seed): t for t in report.ablation.trials
                       if t.arm == arm.name and t.status == "done" and t.seed is not None} for arm in report.arms}
    others = [arm.name for arm in report.arms if not arm.is_baseline]
    analysis.arms_compared = len(others)
    base = done.get(report.baseline, {})
    for key in report.keys:
        for arm in others:
            analysis.comparisons[(arm, key)] = _seed_level(report, arm, key, done[arm], base, min_effect)
    _per_example(report, analysis, done, others, resamples, np.random.default_rng(seed))
    for key in report.keys:
        family = {arm: analysis.comparisons[(arm, key)] for arm in others}
        for arm, p in holm({arm: c.p for arm, c in family.items()}).items():
            family[arm].p_holm = p
        adjusted = holm({arm: c.per_example.p if c.per_example else None for arm, c in family.items()})
        for arm, c in family.items():
            if c.per_example is not None:
                c.per_example.p_holm = adjusted[arm]
    return analysis


def seed_value(trial: Trial, key: str) -> float | None:
    """A trial's value of a report key: ``<metric>_best`` is the metric's best epoch, anything else its final."""
    if key.endswith(BEST_SUFFIX):
        best = trial.value(key[: -len(BEST_SUFFIX)], "best")
        return best if best is not None else trial.value(key)
    return trial.value(key)


def _effect(report: Report, key: str, observed: float | None, min_effect: float | None) -> tuple[float | None, bool]:
    if min_effect is not None and key in report.percent:
        return min_effect / 100, True
    return observed, False


def _seed_level(report: Report, arm: str, key: str, trials: dict[int, Trial], base: dict[int, Trial],
                min_effect: float | None) -> Comparison:
    values = {s: (seed_value(t, key), seed_value(base[s], key)) for s, t in trials.items() if s in base}
    diffs = [a - b for a, b in values.values() if a is not None and b is not None]
    observed = float(np.mean(diffs)) if diffs else None
    scale = max([1.0] + [abs(v) for pair in values.values() for v in pair if v is not None])
    if observed is not None and abs(observed) < 1e-6 * scale:  # equal values up to float32 rounding (torchmetrics)
        observed = 0.0
    effect, named = _effect(report, key, observed, min_effect)
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
    comparison = Comparison(arm, key, len(diffs), effect, named, sd, None, None, paired_t_p(diffs))
    _advise(comparison, sd)
    return comparison


def _advise(comparison: Comparison, sd: float) -> None:
    """Seeds for the seed-paired t test, from the spread ``sd`` of per-seed differences."""
    effect = comparison.effect
    comparison.seeds_needed = None
    if effect is None or comparison.n_seeds == 0:
        comparison.why = "no paired seeds"
    elif effect == 0:
        comparison.why = "no difference observed; name one with --min-effect"
    elif not math.isfinite(sd):
        comparison.why = "one seed: the spread between seeds is not known yet"
    elif sd == 0:
        comparison.why = f"the {comparison.n_seeds} seeds differ by exactly the same amount: the spread is not known"
    else:
        comparison.seeds_needed = seeds_for_t(sd, effect)
        comparison.why = None if comparison.seeds_needed else f"more than {MOST_SEEDS} seeds"


def _per_example(report: Report, analysis: Analysis, done: dict[str, dict[int, Trial]], others: list[str],
                 resamples: int, rng: np.random.Generator) -> None:
    """Per-example analysis of every accuracy whose examples the runs kept."""
    cache: dict[tuple[str, str], Evidence | None] = {}

    def evidence(trial: Trial, name: str) -> Evidence | None:
        if (trial.id, name) not in cache:
            cache[(trial.id, name)] = load_evidence(evidence_path(trial.dir, name))
        return cache[(trial.id, name)]

    for key in report.keys:
        if key not in SOURCES or key not in report.percent:
            continue
        name, bit = SOURCES[key]
        for arm in others:
            diffs = _difference(done[arm], done[report.baseline], evidence, name, bit)
            if diffs is None:
                continue
            boot = summarise(float(diffs.mean()), bootstrap_means(diffs, resamples, rng))
            per = PerExample(boot.delta, boot.ci, boot.p, diffs.shape[1], diffs.shape[0], flips(diffs))
            comparison = analysis.comparisons[(arm, key)]
            _advise_examples(per, comparison, diffs)
            comparison.per_example = per


def _difference(arm: dict[int, Trial], base: dict[int, Trial], load: Callable[[Trial, str], Evidence | None],
                name: str, bit: int) -> np.ndarray | None:
    """D[seed, example] over the seeds both arms have evidence for and the examples all of them cover; None when
    there is none."""
    pairs = [(load(arm[s], name), load(base[s], name)) for s in sorted(set(arm) & set(base))]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    index = pairs[0][0].index
    for a, b in pairs:
        for ev in (a, b):
            if not np.array_equal(ev.index, index):
                index = np.intersect1d(index, ev.index, assume_unique=True)
    if index.size == 0:
        return None

    def hits(ev: Evidence) -> np.ndarray:
        picked = ev.correct if ev.index.size == index.size else ev.correct[np.searchsorted(ev.index, index)]
        return ((picked & bit) != 0).astype(np.int8)

    return np.stack([hits(a) - hits(b) for a, b in pairs])


def _advise_examples(per: PerExample, comparison: Comparison, diffs: np.ndarray) -> None:
    """Seeds for the per-example interval; and a floor under the seed-level spread from the same evidence."""
    effect, n_examples = comparison.effect, diffs.shape[1]
    parts = components(diffs)
    if not effect:
        per.why = comparison.why or "no difference observed; name one with --min-effect"
        return
    if parts is None:
        per.why = "one seed: the spread between seeds is not known yet"
        return
    per.seeds_needed = seeds_for_examples(parts, n_examples, effect)
    if per.seeds_needed is None:
        per.why = f"not with {n_examples:,} examples, at any number of seeds" \
            if examples_limit(parts, n_examples, effect) else f"more than {MOST_SEEDS} seeds"
    # Per-seed differences spread at least as much as independent example flips make them (residual / E), even
    # when a few seeds happened to differ by exactly the same amount.
    if math.isfinite(comparison.sd):
        _advise(comparison, max(comparison.sd, math.sqrt(parts.residual / n_examples)))
