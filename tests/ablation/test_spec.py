"""The ablation: section — expansion counts and order, arm names, stable trial ids, and every bad-spec message."""

import math
import re

import pytest

from lightning_depth.ablation.spec import expand, parse_spec, short_keys, slug, trial_id, trials
from lightning_depth.errors import UsageError

PREACT = "model.net.init_args.preact"
BLOCK = "model.net.init_args.block"
WIDTH = "model.net.init_args.width"


def section(**overrides):
    raw = {"name": "preact", "factors": {PREACT: [False, True]}, "seeds": [0, 1, 2]}
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not None}


@pytest.mark.parametrize("factors", [{PREACT: [False, True]}, {PREACT: [False, True], BLOCK: ["basic", "bottleneck"]},
                                     {PREACT: [False, True], BLOCK: ["basic", "bottleneck"], WIDTH: [16, 32, 64]}])
@pytest.mark.parametrize("design", ["factorial", "one_at_a_time"])
def test_expansion_counts(factors, design):
    spec = parse_spec(section(factors=factors, design=design))
    sizes = [len(v) for v in factors.values()]
    arms = math.prod(sizes) if design == "factorial" else 1 + sum(n - 1 for n in sizes)
    assert len(expand(spec)) == arms
    assert len(trials(spec)) == arms * len(spec.seeds)
    assert sum(arm.is_baseline for arm in expand(spec)) == 1


def test_trials_are_seed_major_so_first_results_cover_every_arm():
    spec = parse_spec(section(factors={PREACT: [False, True], BLOCK: ["basic", "bottleneck"]}, seeds=[3, 1]))
    order = [(arm.name, seed) for arm, seed in trials(spec)]
    names = [arm.name for arm in expand(spec)]
    assert order == [(n, 3) for n in names] + [(n, 1) for n in names]
    assert order == [(arm.name, seed) for arm, seed in trials(parse_spec(section(
        factors={PREACT: [False, True], BLOCK: ["basic", "bottleneck"]}, seeds=[3, 1])))]


def test_factorial_names_follow_factor_order_with_yaml_values():
    spec = parse_spec(section(factors={BLOCK: ["basic", "bottleneck"], PREACT: [False, True]}))
    assert [a.name for a in expand(spec)] == [
        "block=basic,preact=false", "block=basic,preact=true", "block=bottleneck,preact=false",
        "block=bottleneck,preact=true"]
    assert expand(spec)[0].is_baseline
    assert expand(spec)[3].overrides == {BLOCK: "bottleneck", PREACT: True}


def test_factorial_baseline_is_the_arm_matching_baseline_partial_ones_default_to_first_values():
    spec = parse_spec(section(factors={BLOCK: ["basic", "bottleneck"], PREACT: [False, True]},
                              baseline={PREACT: True}))
    assert spec.baseline == {BLOCK: "basic", PREACT: True}
    arms = expand(spec)
    assert arms[0].name == "block=basic,preact=true" and arms[0].is_baseline
    assert [a.name for a in arms if a.is_baseline] == ["block=basic,preact=true"]


def test_one_at_a_time_varies_one_factor_from_the_baseline():
    spec = parse_spec(section(design="one_at_a_time", factors={PREACT: [False, True], WIDTH: [16, 32, 64]},
                              baseline={WIDTH: 32}))
    arms = expand(spec)
    assert [a.name for a in arms] == ["baseline", "preact=true", "width=16", "width=64"]
    assert arms[0].overrides == {PREACT: False, WIDTH: 32} and arms[0].is_baseline
    assert arms[3].overrides == {PREACT: False, WIDTH: 64}


def test_list_design_keeps_named_arms_and_derives_factors():
    arms = {"post": {PREACT: False}, "pre": {PREACT: True}, "pre-wide": {PREACT: True, WIDTH: 64}}
    spec = parse_spec(section(design="list", factors=None, arms=arms, baseline="post"))
    assert [(a.name, a.is_baseline) for a in expand(spec)] == [("post", True), ("pre", False), ("pre-wide", False)]
    assert spec.factors == {PREACT: [False, True], WIDTH: [64]}
    assert parse_spec(section(design="list", factors=None, arms=arms)).baseline == "post"  # default: first arm


def test_short_keys_use_enough_components_to_disambiguate():
    keys = ["model.net.init_args.width", "data.init_args.width", PREACT]
    assert short_keys(keys) == {"model.net.init_args.width": "net.init_args.width",
                                "data.init_args.width": "data.init_args.width", PREACT: "preact"}
    spec = parse_spec(section(factors={"model.net.init_args.lr": [0.1], "model.optimizer.init_args.lr": [0.1, 0.01]}))
    assert [a.name for a in expand(spec)] == ["net.init_args.lr=0.1,optimizer.init_args.lr=0.1",
                                              "net.init_args.lr=0.1,optimizer.init_args.lr=0.01"]


def test_values_render_stably_class_paths_by_name_and_colliding_labels_as_json():
    spec = parse_spec(section(factors={"model.optimizer": [{"class_path": "torch.optim.SGD"},
                                                           {"class_path": "torch.optim.AdamW"}],
                                       "model.net.init_args.x": ["true", True, None]}))
    names = [a.name for a in expand(spec)]
    assert names[0] == 'optimizer=SGD,x="true"'
    assert 'optimizer=AdamW,x=true' in names and "optimizer=AdamW,x=null" in names


def test_trial_ids_are_stable_readable_and_content_addressed():
    arm = expand(parse_spec(section(factors={BLOCK: ["basic", "bottleneck"], PREACT: [False, True]})))[3]
    config = {"model": {"net": {"init_args": {"preact": True, "block": "bottleneck"}}}, "trainer": {"max_epochs": 3}}
    tid = trial_id(arm, 0, config)
    assert re.fullmatch(r"block-bottleneck_preact-true-s0-[0-9a-f]{10}", tid)
    assert tid == trial_id(arm, 0, dict(reversed(list(config.items()))))  # key order does not matter
    assert trial_id(arm, 1, config) != tid
    assert trial_id(arm, 0, {**config, "trainer": {"max_epochs": 4}}).rsplit("-", 1)[1] != tid.rsplit("-", 1)[1]


def test_trial_ids_are_unique_across_arms_and_seeds():
    spec = parse_spec(section(factors={BLOCK: ["basic", "bottleneck"], PREACT: [False, True], WIDTH: [16, 32]}))
    ids = [trial_id(arm, seed, {"overrides": arm.overrides}) for arm, seed in trials(spec)]
    assert len(ids) == len(set(ids)) == 8 * 3


def test_slug_is_filesystem_safe():
    assert slug("block=bottleneck,preact=true") == "block-bottleneck_preact-true"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", slug("lr=1e-3,opt=torch/optim SGD"))
    assert slug("//") == "arm"


def test_slurm_options_pass_through_untouched():
    spec = parse_spec(section(slurm={"partition": "gpu", "time": "04:00:00"}, metric="val/loss"))
    assert spec.slurm == {"partition": "gpu", "time": "04:00:00"} and spec.metric == "val/loss"


BAD = [
    (section(name=None), r"ablation.name: missing"),
    (section(name="my ablation"), r"not a safe directory name"),
    (section(name=".."), r"not a safe directory name"),
    (section(design="grid"), r"'grid' is not one of factorial, one_at_a_time, list"),
    (section(factors={PREACT: []}), rf"factors.{PREACT}: empty list"),
    (section(factors={PREACT: True}), r"expected a list of values"),
    (section(factors={}), r"ablation.factors: expected a mapping"),
    (section(factors={PREACT: [True, False, True]}), r"duplicated value\(s\) true"),
    (section(factors={"preact": [True]}), r"'preact' is not a dotted config key"),
    (section(factors={"seed_everything": [1, 2]}), r"seed_everything is set from ablation.seeds"),
    (section(seeds=None), r"ablation.seeds: missing"),
    (section(seeds=[]), r"non-empty list"),
    (section(seeds=[0, True]), r"True is not an integer seed"),
    (section(seeds=[0, 1.5]), r"1.5 is not an integer seed"),
    (section(seeds=[0, 1, 0]), r"duplicated seed\(s\) 0"),
    (section(baseline={PREACT: "maybe"}), r"'maybe' is not among the factor's values"),
    (section(baseline={BLOCK: "basic"}), r"is not a factor; factors: " + PREACT),
    (section(baseline="post"), r"expected a mapping of factor -> value"),
    (section(epochs=3, lr=0.1), r"unknown key\(s\) epochs, lr; allowed: name, design, factors, arms, baseline"),
    (section(arms={"a": {PREACT: True}}), r"ablation.arms: only for design: list"),
    (section(design="list", factors=None), r"a list design needs a mapping"),
    (section(design="list", arms={"a": {PREACT: True}}), r"a list design names its arms"),
    (section(design="list", factors=None, arms={"a": {PREACT: True}, "b": {PREACT: True}}),
     r"a and b have identical overrides"),
    (section(design="list", factors=None, arms={"Pre": {PREACT: True}, "pre": {PREACT: False}}),
     r"duplicate arm names 'Pre' and 'pre'"),
    (section(design="list", factors=None, arms={"a": {"preact": True}}), r"ablation.arms.a: 'preact' is not a dotted"),
    (section(design="list", factors=None, arms={"a": {PREACT: True}}, baseline="b"), r"'b' is not among the arms a"),
    (section(metric=""), r"ablation.metric"),
    (section(slurm="gpu"), r"ablation.slurm: expected a mapping"),
    ([1, 2], r"ablation: expected a mapping"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_specs_fail_with_one_line(raw, message):
    with pytest.raises(UsageError, match=message) as err:
        parse_spec(raw)
    assert "\n" not in str(err.value)
