"""Statistics on known numbers: mean ± sample std, seed-paired deltas with Student's t intervals, EDFs."""

import math

import pytest

from lightning_depth.ablation.stats import (
    CI_LABEL,
    bootstrap_interval,
    edf,
    mean_std,
    paired_delta,
    t_interval,
)
from lightning_depth.metrics import metric_mode

T_975_2 = 4.302652729911275  # Student's t, 97.5th percentile, 2 degrees of freedom (any t table)


def test_summary_is_mean_and_sample_std():
    s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.n) == (2.5, 4)
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # ddof=1: sum of squares 5 over n - 1 = 3


def test_summary_of_one_run_has_undefined_std_and_of_none_undefined_mean():
    one, none = mean_std([0.93]), mean_std([])
    assert one.mean == 0.93 and one.n == 1 and math.isnan(one.std)
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.std)


def test_t_interval_on_known_differences():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = T_975_2 * 1.0 / math.sqrt(3)  # mean 2, sd 1
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert t_interval([5.0]) is None and t_interval([]) is None


def test_paired_delta_pairs_by_seed_over_shared_seeds_only():
    arm = {0: 11.0, 1: 12.0, 2: 13.0, 7: 99.0}
    base = {0: 10.0, 1: 10.0, 2: 10.0, 5: -99.0}
    d = paired_delta(arm, base)
    assert d.seeds == (0, 1, 2) and d.n == 3 and d.mean == 2.0
    assert d.ci == pytest.approx((2 - T_975_2 / math.sqrt(3), 2 + T_975_2 / math.sqrt(3)))


def test_paired_delta_with_one_shared_seed_has_no_interval_and_none_without_shared_seeds():
    one = paired_delta({0: 0.95, 1: 0.9}, {0: 0.93})
    assert one.n == 1 and one.mean == pytest.approx(0.02) and one.ci is None
    assert paired_delta({1: 0.9}, {0: 0.93}) is None


def test_paired_differences_that_all_agree_claim_no_interval():
    """Deterministic training can move the same examples on every seed: zero spread, which a t interval would show
    as a single point ([+0.37, +0.37]), a certainty three seeds cannot give."""
    base = {0: 0.9130, 1: 0.9152, 2: 0.9141}
    d = paired_delta({s: v + 1 / 270 for s, v in base.items()}, base)
    assert d.equal and d.ci is None and d.n == 3 and d.mean == pytest.approx(1 / 270)
    spread = paired_delta({0: 0.92, 1: 0.93, 2: 0.9141 + 1 / 270}, base)
    assert not spread.equal and spread.ci is not None


def test_paired_interval_is_tighter_than_the_spread_of_either_arm():
    base = {s: 0.90 + 0.01 * s for s in range(5)}  # seeds move both arms together
    arm = {s: v + 0.005 + 0.0001 * (-1) ** s for s, v in base.items()}
    low, high = paired_delta(arm, base).ci
    assert 0 < low < 0.005 < high < 0.006


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    values = [0.1, 0.4, 0.2, 0.5, 0.3, 0.35]
    ci = bootstrap_interval(values, n_resamples=2000)
    assert ci == bootstrap_interval(values, n_resamples=2000)
    assert ci[0] < sum(values) / len(values) < ci[1]
    # Resampling [0, 1] gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1].
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_interval([0.3]) is None
    assert bootstrap_interval([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))


@pytest.mark.parametrize(("metric", "mode"), [("val/acc1", "max"), ("val/acc1_best", "max"), ("test/acc5", "max"),
                                              ("val/loss", "min"), ("train/loss", "min"), ("val/top1_err", "min")])
def test_metric_direction(metric, mode):
    assert metric_mode(metric) == mode


def test_edf_is_the_fraction_of_runs_at_or_below_each_value():
    x, y = edf([0.3, 0.1, 0.2, 0.4])
    assert list(x) == [0.1, 0.2, 0.3, 0.4] and list(y) == [0.25, 0.5, 0.75, 1.0]


def test_the_report_names_its_interval():
    assert CI_LABEL == "paired t, 95%"
