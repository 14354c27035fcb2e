"""The per-example comparison, specified on constructed data whose answer is known: the two-level bootstrap, flips,
variance components, the seeds advisor, Holm's adjustment, and how compare shows them."""

import json
import math

import numpy as np
import pytest

from lightning_depth.ablation import paired
from lightning_depth.ablation.render import render
from lightning_depth.ablation.report import build_report
from tests.helpers.ablations import make_ablation
from tests.helpers.cli import cli_in_process
from tests.helpers.per_example import BASELINE, BETTER, N_EXAMPLES, SAME, SEEDS, make_evidence_ablation, wrong_on

# -- the two-level bootstrap ------------------------------------------------------------------------------------


def test_with_one_seed_the_interval_is_the_binomial_interval_of_the_flips():
    # 300 examples won, 100 lost of 10,000: the mean difference has the normal-theory standard error below.
    diffs = np.zeros((1, 10_000))
    diffs[0, :300], diffs[0, 300:400] = 1, -1
    boot = paired.two_level_bootstrap(diffs)
    se = math.sqrt(400 / 10_000 - 0.02**2) / math.sqrt(10_000)
    assert boot.delta == pytest.approx(0.02)
    assert boot.ci == pytest.approx((0.02 - 1.96 * se, 0.02 + 1.96 * se), abs=0.0004)
    assert boot.p < 0.001


def test_when_only_the_seeds_differ_the_interval_is_the_bootstrap_of_the_seed_means():
    # Every example differs by the seed's own amount. Three seeds drawn with replacement: the lowest mean (all three
    # draws the first seed) has probability 1/27 > 2.5%, so the percentile interval is exactly [lowest, highest].
    diffs = np.repeat([[0.0], [0.1], [0.2]], 50, axis=1)
    boot = paired.two_level_bootstrap(diffs)
    assert boot.delta == pytest.approx(0.1) and boot.ci == pytest.approx((0.0, 0.2))


def test_exact_and_normal_example_draws_give_the_same_interval():
    rng = np.random.default_rng(3)
    diffs = rng.choice([-1, 0, 0, 0, 0, 0, 1, 1], size=(3, 600)).astype(float)
    exact = paired.bootstrap_means(diffs, 20_000, np.random.default_rng(0), exact_up_to=10**6)
    normal = paired.bootstrap_means(diffs, 20_000, np.random.default_rng(0), exact_up_to=0)
    assert np.percentile(normal, [2.5, 50, 97.5]) == pytest.approx(np.percentile(exact, [2.5, 50, 97.5]), abs=0.004)
    assert normal.std() == pytest.approx(exact.std(), rel=0.05)


def test_the_bootstrap_is_reproducible():
    diffs = np.stack([BETTER[s].astype(int) - BASELINE[s] for s in SEEDS])
    assert paired.two_level_bootstrap(diffs) == paired.two_level_bootstrap(diffs)


# -- flips and variance components ---------------------------------------------------------------------------------


def test_flips_are_counted_both_ways_over_every_seed_and_example():
    diffs = np.stack([BETTER[s].astype(int) - BASELINE[s] for s in SEEDS])
    # By seed the arm fixes 6, 4 and 8 of the baseline's mistakes and makes one new one.
    assert paired.flips(diffs) == (3, 18)


def test_variance_components_recover_a_pure_seed_and_a_pure_example_effect():
    seed_effect = np.repeat([[0.0], [0.1], [0.5]], 40, axis=1)
    parts = paired.components(seed_effect)
    assert parts.seed == pytest.approx(np.var([0.0, 0.1, 0.5], ddof=1))
    assert parts.example == pytest.approx(0, abs=1e-12) and parts.residual == pytest.approx(0, abs=1e-12)
    example_effect = np.tile(np.linspace(-1, 1, 40), (3, 1))
    parts = paired.components(example_effect)
    assert parts.example == pytest.approx(np.var(np.linspace(-1, 1, 40), ddof=1))
    assert parts.seed == pytest.approx(0, abs=1e-12)
    assert paired.components(np.ones((1, 40))) is None


# -- the seeds advisor, p-values, Holm ----------------------------------------------------------------------------


@pytest.mark.parametrize("effect, seeds, power", [(0.5, 34, 0.8078), (1.0, 10, 0.8031)])
def test_seeds_for_the_paired_t_test_match_gpower(effect, seeds, power):
    # G*Power 3.1, t test of matched pairs, two-tailed, α = 0.05, power 0.80, effect size dz = effect / sd.
    assert paired.seeds_for_t(1.0, effect) == seeds
    assert paired.paired_t_power(seeds, 1.0, effect) == pytest.approx(power, abs=1e-4)
    assert paired.seeds_for_t(2.0, 2 * effect) == seeds  # only the ratio matters


def test_seeds_advice_limits():
    assert paired.seeds_for_t(1.0, 0.0) is None  # nothing to resolve
    assert paired.seeds_for_t(1.0, 0.01) is None  # beyond a thousand seeds
    # Examples that alone vary more than the difference allows: no number of seeds helps, more examples would.
    parts = paired.Components(seed=0.0, example=0.05, residual=0.01)
    assert paired.examples_limit(parts, 100, 0.02) and paired.seeds_for_examples(parts, 100, 0.02) is None
    assert not paired.examples_limit(parts, 100_000, 0.02)
    # Seed variance 1e-4 and nothing else: n ≥ 1e-4 · (1.96 + 0.84)² / 0.01² = 7.85, so 8 seeds.
    assert paired.seeds_for_examples(paired.Components(1e-4, 0.0, 0.0), 1000, 0.01) == 8


def test_paired_t_p_value_on_known_numbers():
    # Differences 1, 2, 3: t = 2 / (1 / √3) = 3.464 with 2 degrees of freedom, two-sided p = 0.0742.
    assert paired.paired_t_p([1.0, 2.0, 3.0]) == pytest.approx(0.0742, abs=1e-4)
    assert paired.paired_t_p([1.0, 1.0, 1.0]) is None and paired.paired_t_p([1.0]) is None


def test_holm_adjusts_a_known_family():
    # Sorted 0.01, 0.03, 0.04 of m = 4 (one undefined): ×4, ×3, ×2, never decreasing.
    assert paired.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": None}) == pytest.approx(
        {"a": 0.04, "b": 0.09, "c": 0.09, "d": None})
    assert paired.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


# -- compare: the analysis of a whole ablation --------------------------------------------------------------------


def test_analysis_of_an_ablation_with_evidence_counts_what_was_constructed(tmp_path):
    analysis = paired.analyse(build_report(make_evidence_ablation(tmp_path / "toy")))
    better, same = analysis.get("better", "val/acc1"), analysis.get("same", "val/acc1")
    assert analysis.arms_compared == 2 and analysis.per_example_keys == ["val/acc1", "val/acc1_best"]
    per = better.per_example
    assert (per.n_seeds, per.n_examples, per.flips) == (3, N_EXAMPLES, (3, 18))
    assert per.delta == pytest.approx(5 / N_EXAMPLES)  # the mean of +5, +3, +7 examples
    assert per.ci95[0] < per.delta < per.ci95[1]
    # "same" differs from the baseline in no seed: the t interval collapses to a point, the per-example one does
    # not, since three examples flip each way.
    assert same.p is None and same.per_example.flips == (3, 3)
    assert same.per_example.ci95[0] < 0 < same.per_example.ci95[1]
    assert same.seeds_needed is None and "no difference observed" in same.why


def test_per_example_interval_resolves_what_three_seeds_cannot(tmp_path):
    # Under each seed the arm fixes some of the baseline's mistakes and makes new ones, at examples of their own:
    # (fixed, broken) = (30, 10), (25, 15), (40, 5). The per-seed Δ of +20, +10, +35 examples spreads so much that
    # three seeds' t interval includes 0; the 125 flips, 95 of them one way, leave no doubt.
    base, arm, start = {}, {}, 0
    for seed, (fixed, broken) in zip(SEEDS, [(30, 10), (25, 15), (40, 5)]):
        base[seed] = wrong_on(*range(start, start + fixed))
        arm[seed] = wrong_on(*range(start + fixed, start + fixed + broken))
        start += fixed + broken
    report = build_report(make_evidence_ablation(tmp_path / "toy", {"baseline": base, "arm": arm}))
    comparison = paired.analyse(report).get("arm", "val/acc1")
    seed_ci = next(a for a in report.arms if a.name == "arm").metrics["val/acc1"].ci95
    per = comparison.per_example
    assert seed_ci[0] < 0 < seed_ci[1]
    assert per.flips == (30, 95) and per.ci95[0] > 0 and per.p < 0.01
    # The worked example of docs/statistics.md, to the digit it prints.
    assert [round(100 * v, 2) for v in (*seed_ci, *per.ci95)] == [-2.66, 14.70, 1.94, 10.09]
    assert (comparison.seeds_needed, per.seeds_needed) == (5, 3)
    assert per.ci95[1] - per.ci95[0] < (seed_ci[1] - seed_ci[0]) / 2
    assert per.seeds_needed < comparison.seeds_needed


def test_json_has_per_example_and_seeds_needed_beside_each_accuracy_delta(tmp_path):
    data = json.loads(render(build_report(make_evidence_ablation(tmp_path / "toy")), "json"))
    assert data["per_example_ci"] == paired.LABEL and data["arms_compared"] == 2
    better = next(a for a in data["arms"] if a["arm"] == "better")["metrics"]
    assert {"mean", "std", "delta", "ci95", "p", "p_holm", "seeds_needed", "per_example"} <= set(better["val/acc1"])
    per = better["val/acc1"]["per_example"]
    assert (per["n_examples"], per["n_seeds"], per["flips"]) == (N_EXAMPLES, 3, [3, 18])
    assert len(per["ci95"]) == 2 and per["ci95"][0] <= per["delta"] <= per["ci95"][1]
    assert isinstance(better["val/acc1"]["seeds_needed"], int)
    assert "per_example" not in better["val/loss"]  # not an accuracy: no examples to pair
    baseline = next(a for a in data["arms"] if a["arm"] == "baseline")["metrics"]
    assert baseline["val/acc1"]["per_example"] is None and baseline["val/acc1"]["seeds_needed"] is None


def test_markdown_shows_both_intervals_flips_seeds_advice_and_holm(tmp_path):
    text = render(build_report(make_evidence_ablation(tmp_path / "toy")), "markdown")
    assert "| Δ val/acc1 [95% CI] | Δ val/acc1 per-example [95% CI] | p Holm (per-example) |" in text
    assert "- better: +1.39 [" in text and "over 3 seeds × 360 examples; flips: 3 right → wrong, 18 wrong → right" \
        in text
    assert "Seeds to resolve the observed Δ in val/acc1 at 95% confidence with 80% power:" in text
    assert "- better (Δ +1.39): 4 with the seed-paired t interval" in text
    assert "2 arms are compared with one baseline" in text


def test_min_effect_sizes_the_advice_for_the_named_difference(tmp_path, capfd):
    root = make_evidence_ablation(tmp_path / "toy")
    result = cli_in_process(capfd, "compare", str(root), "--no-plots", "--format", "json", "--min-effect", "2")
    data = json.loads(result.stdout)
    assert data["seeds_advice"] == {"confidence": 0.95, "power": 0.8, "min_effect": 2.0}
    better = next(a for a in data["arms"] if a["arm"] == "better")["metrics"]["val/acc1"]
    # Per-seed differences of 5, 3, 7 examples of 360: sd = 2/360; a 2-point difference needs this many seeds.
    assert better["seeds_needed"] == paired.seeds_for_t(2 / 360, 0.02) == 3
    text = cli_in_process(capfd, "compare", str(root), "--no-plots", "--min-effect", "2").stdout
    assert "Seeds to resolve a Δ of 2 points (--min-effect) in val/acc1" in text
    bad = cli_in_process(capfd, "compare", str(root), "--min-effect", "0")
    assert bad.returncode == 2 and "--min-effect 0.0: must be a positive difference" in bad.stderr


def test_one_arm_gets_no_holm_column_and_runs_without_evidence_keep_the_seed_level_table(tmp_path):
    one = make_evidence_ablation(tmp_path / "one", {"baseline": BASELINE, "same": SAME})
    text = render(build_report(one), "markdown")
    assert "Holm" not in text and "arms are compared" not in text and "per-example [95% CI]" in text
    old = render(build_report(make_ablation(tmp_path / "old")), "markdown")
    assert "per-example" not in old and "Seeds to resolve the observed Δ" in old and "p Holm (paired t)" in old
    assert json.loads(render(build_report(make_ablation(tmp_path / "old2")), "json"))["arms"][1]["metrics"][
        "val/acc1"]["per_example"] is None
