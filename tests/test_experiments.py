"""Every experiment file is a valid, honest configuration: it parses with the CLI, names its source, and runs a
training step on the embedded digits. An ablation is one recipe plus one design, composed rather than copied: it
trains its recipe changed only where it says, and its arms differ only in their factors."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_depth.__main__ import main
from lightning_depth.ablation.run import plan
from lightning_depth.ablation.spec import parse_spec
from lightning_depth.cli import DepthCLI
from lightning_depth.runs import resolved_config
from tests.helpers.cli import ROOT

EXPERIMENTS = ROOT / "experiments"
PAPER, QUICK = EXPERIMENTS / "paper", EXPERIMENTS / "quick"
# Each ablation's design (its ablation: section), once; the ablations below load it.
DESIGNS = sorted((EXPERIMENTS / "ablations").glob("*.yaml"))
# One design on one recipe: on the embedded digits at the top level, at paper scale under paper/.
EMBEDDED = sorted(EXPERIMENTS.glob("*_ablation.yaml"))
ABLATIONS = EMBEDDED + sorted(PAPER.glob("*_ablation.yaml"))
RECIPES = sorted(p for p in PAPER.glob("*.yaml") if p not in ABLATIONS) + sorted(QUICK.glob("*.yaml"))
CONFIGS = RECIPES + ABLATIONS  # what `fit --config` takes
# Smallest digits image that every network of a family accepts (AlexNet's three overlapping pools need 67).
SMOKE_IMAGE_SIZE = {"AlexNet": 67}
# What a trial's config may change besides its factors: where it writes and how W&B labels it.
PER_TRIAL = {"seed_everything", "trainer.default_root_dir", "trainer.logger"}


def _rel(path: Path) -> str:
    return str(path.relative_to(EXPERIMENTS))


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


class _ParseOnly(DepthCLI):
    """The CLI up to its parsed config: with ``run=False`` there is no subcommand to run, and nothing is built."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


@functools.cache
def _parse(path: Path) -> tuple[Any, Any]:
    """The CLI's own parser and the fully parsed config of ``path`` (read-only: it is cached), as the ablation
    driver receives it: without jsonargparse's record of which file gave what."""
    cli = _ParseOnly(args=["--config", str(path)], run=False)
    return cli.parser, cli.config.clone(with_meta=False)


def _resolved(path: Path) -> dict[str, Any]:
    return _flatten(resolved_config(*_parse(path)))


def _family(path: Path) -> str:
    return _parse(path)[1].model.net.class_path.rsplit(".", 1)[-1]


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    # The CLI runs in-process (imports are paid once); it must not see pytest's own command line.
    monkeypatch.setattr(sys, "argv", ["lightning_depth"])


# -- the layout ------------------------------------------------------------------------------------------------------


def test_every_file_is_a_recipe_a_design_or_an_ablation():
    assert set(EXPERIMENTS.rglob("*.yaml")) == set(RECIPES) | set(DESIGNS) | set(ABLATIONS)


def test_every_family_has_a_paper_recipe_and_a_quick_run_on_the_digits():
    from lightning_depth.models import FAMILIES

    families = {cls.__name__ for cls in FAMILIES.values()}
    assert families <= {_family(p) for p in RECIPES if p.parent == PAPER}
    assert families <= {_family(p) for p in RECIPES if p.parent == QUICK}


@pytest.mark.parametrize("design", DESIGNS, ids=_rel)
def test_every_design_runs_on_the_digits_and_at_paper_scale(design):
    name = _load(design)["name"]
    assert name == design.stem, "a design is named after its file, and its runs' directory after its name"
    for ablation in (EXPERIMENTS / f"{name}_ablation.yaml", PAPER / f"{name}_ablation.yaml"):
        assert ablation.exists(), f"{_rel(design)} has no {_rel(ablation)}"
        assert (ablation.parent / _load(ablation)["ablation"]).resolve() == design


@pytest.mark.parametrize("path", ABLATIONS, ids=_rel)
def test_an_ablation_is_one_recipe_of_its_scale_plus_one_design(path):
    raw = _load(path)
    # jsonargparse reads the file that config: names, then applies the keys below it on top; a key above may lose.
    assert next(iter(raw)) == "config", "config: comes first"
    recipe = (path.parent / raw["config"]).resolve()
    assert recipe in RECIPES and recipe.parent == (QUICK if path in EMBEDDED else PAPER), \
        "embedded ablations build on a quick/ recipe, paper-scale ones on a paper/ recipe"
    assert (path.parent / raw["ablation"]).resolve() in DESIGNS
    # A nested section below config: would replace the recipe's whole section instead of changing one key of it.
    overrides = [key for key in raw if key not in ("config", "ablation")]
    assert all("." in key for key in overrides), f"overrides are the CLI's dotted keys: {overrides}"


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_a_recipe_stands_alone(path):
    assert not {"config", "ablation"} & set(_load(path)), "a recipe includes nothing and ablates nothing"


@pytest.mark.parametrize("path", ABLATIONS, ids=_rel)
def test_an_ablation_trains_its_recipe_changed_only_where_it_says(path):
    raw = _load(path)
    ours, recipe = _resolved(path), _resolved((path.parent / raw["config"]).resolve())
    overrides = {key: value for key, value in raw.items() if key not in ("config", "ablation")}
    changed = {k for k in ours.keys() | recipe.keys() if ours.get(k) != recipe.get(k)}
    assert changed <= set(overrides), f"also changed: {sorted(changed - set(overrides))}"
    assert {key: ours.get(key) for key in overrides} == overrides


# -- every file ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_parses_with_the_cli(path, capsys):
    try:
        code = main(["fit", "--config", str(path), "--print_config"])
    except SystemExit as done:  # --print_config ends the parser with exit 0 after printing
        code = done.code
    out, err = capsys.readouterr()
    assert code in (0, None), err
    printed = yaml.safe_load(out)
    assert printed["model"]["net"]["class_path"].startswith("lightning_depth.models.")
    assert printed["data"]["class_path"].startswith("lightning_depth.data.")


@pytest.mark.parametrize("path", CONFIGS + DESIGNS, ids=_rel)
def test_file_names_its_source_and_leaves_num_classes_to_the_data(path):
    assert path.read_text().startswith("#"), "an experiment file opens with a comment naming its paper and section"
    keys = [key.rsplit(".", 1)[-1] for key in _flatten(_load(path))]
    assert "num_classes" not in keys, "num_classes is linked from the data module, never set in a config"


# -- ablations -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ABLATIONS, ids=_rel)
def test_ablation_arms_are_valid_and_differ_only_in_their_factors(path, tmp_path):
    parser, cfg = _parse(path)
    spec = parse_spec(cfg.ablation)
    assert len(spec.seeds) >= 3
    planned = plan(parser, cfg, spec, tmp_path)  # validates every arm with the CLI's parser, as the driver does

    arms = {}  # arm name -> its first trial (every arm's trials differ only in the seed)
    for trial in planned:
        arms.setdefault(trial.arm.name, trial)
    flat = {name: {k: v for k, v in _flatten(yaml.safe_load(parser.dump(t.config, skip_check=True))).items()
                   if not any(k == p or k.startswith(p + ".") for p in PER_TRIAL)}
            for name, t in arms.items()}
    base = next(iter(flat.values()))
    for name, config in flat.items():
        changed = {k for k in base.keys() | config.keys() if base.get(k) != config.get(k)}
        assert changed <= set(spec.factors), f"arm {name} also changes {sorted(changed - set(spec.factors))}"

    # Every arm builds its network (on the meta device: no memory, no initialisation cost).
    for trial in arms.values():
        net = trial.config.model.net
        module, _, name = net.class_path.rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        with torch.device("meta"):
            cls(**{**net.init_args.as_dict(), "num_classes": 10})


# -- a training step -------------------------------------------------------------------------------------------------


def _smoke_args(path: Path) -> list[str]:
    """Command-line overrides that bring a paper-scale file to the embedded digits on the CPU."""
    cfg = _parse(path)[1]
    args = ["--ablation", "null"] if cfg.get("ablation") else []
    if cfg.data.class_path.endswith("DigitsDataModule"):
        return args
    return args + [
        "--data", "lightning_depth.data.DigitsDataModule",
        "--data.init_args.image_size", str(SMOKE_IMAGE_SIZE.get(_family(path), 32)),
        "--data.init_args.batch_size", "8",
        "--data.init_args.num_workers", "0",  # the ImageNet files' 8 loader workers would carry over
        "--trainer.accelerator", "cpu",
        "--trainer.devices", "1",
        "--trainer.precision", "32",
    ]


# The paper-scale ablations are left out: each trains its paper recipe, which runs here, changed only in the
# network's toggles (tested above), and every arm's network is built above; a step each would add minutes and no
# coverage.
@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES + EMBEDDED, ids=_rel)
def test_config_runs_a_training_and_a_validation_step(path, tmp_path):
    code = main(["fit", "--config", str(path), "--trainer.fast_dev_run", "1",
                 "--trainer.default_root_dir", str(tmp_path), *_smoke_args(path)])
    assert code == 0
