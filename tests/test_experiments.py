"""Every experiment file is a valid, honest configuration: it parses, its ablation arms differ only in their factor,
the paper-scale ablations keep their family's recipe, and every file runs a training step on the embedded digits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import ROOT

from lightning_depth.ablation.run import plan
from lightning_depth.ablation.spec import parse_spec
from lightning_depth.cli import _build_cli_class, main

EXPERIMENTS = ROOT / "experiments"
CONFIGS = sorted(EXPERIMENTS.rglob("*.yaml"))
ABLATIONS = [p for p in CONFIGS if "ablation" in yaml.safe_load(p.read_text())]
PAPER = EXPERIMENTS / "paper"

# Each paper-scale ablation keeps the recipe of one family file; only the network's toggles may differ.
PAPER_RECIPES = {
    "alexnet_lrn_ablation.yaml": "alexnet_imagenet.yaml",
    "alexnet_towers_ablation.yaml": "alexnet_imagenet.yaml",
    "vgg_depth_ablation.yaml": "vgg16_imagenet.yaml",
    "googlenet_aux_ablation.yaml": "googlenet_imagenet.yaml",
    "googlenet_inception_ablation.yaml": "googlenet_imagenet.yaml",
    "residual_ablation.yaml": "resnet_cifar.yaml",
    "bottleneck_ablation.yaml": "resnet_cifar.yaml",
    "shortcut_ablation.yaml": "resnet50_imagenet.yaml",
    "preact_ablation.yaml": "preact_resnet164_cifar.yaml",
    "growth_rate_ablation.yaml": "densenet_bc_100_12_cifar.yaml",
    "densenet_bc_ablation.yaml": "densenet_bc_100_12_cifar.yaml",
}
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


class _Parsed(Exception):
    """Stops the CLI after parsing, carrying the fit parser and the parsed config."""

    def __init__(self, parser: Any, cfg: Any) -> None:
        super().__init__()
        self.parser, self.cfg = parser, cfg


def _parse(path: Path) -> tuple[Any, Any]:
    """The CLI's own parser and the fully parsed ``fit`` config of ``path``, without running anything."""
    base = _build_cli_class()

    class Capture(base):
        def before_instantiate_classes(self) -> None:
            raise _Parsed(self._parser("fit"), self.config["fit"])

    with pytest.raises(_Parsed) as parsed:
        Capture(["fit", "--config", str(path)])
    return parsed.value.parser, parsed.value.cfg


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    # The CLI runs in-process (imports are paid once); it must not see pytest's own command line.
    monkeypatch.setattr(sys, "argv", ["lightning_depth"])


# -- every file ------------------------------------------------------------------------------------------------------


def _family(path: Path) -> str:
    return _load(path)["model"]["net"]["class_path"].rsplit(".", 1)[-1]


def test_every_family_has_a_paper_recipe_and_a_quick_run_on_the_digits():
    from lightning_depth.models import FAMILIES

    families = {cls.__name__ for cls in FAMILIES.values()}
    recipes = [p for p in EXPERIMENTS.glob("*.yaml") if "ablation" not in _load(p)]
    assert families <= {_family(p) for p in recipes}
    assert families <= {_family(p) for p in (EXPERIMENTS / "quick").glob("*.yaml")}


def test_every_embedded_ablation_has_a_paper_scale_twin():
    embedded = {p.name for p in EXPERIMENTS.glob("*_ablation.yaml")}
    assert embedded == {p.name for p in PAPER.glob("*.yaml")} == set(PAPER_RECIPES)


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


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_config_names_its_source_and_leaves_num_classes_to_the_data(path):
    text = path.read_text()
    assert text.startswith("#"), "an experiment file opens with a comment naming its paper and section"
    keys = [key.rsplit(".", 1)[-1] for key in _flatten(_load(path))]
    assert "num_classes" not in keys, "num_classes is linked from the data module, never set in a config"


# -- ablations -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ABLATIONS, ids=_rel)
def test_ablation_arms_are_valid_and_differ_only_in_their_factors(path, tmp_path):
    parser, cfg = _parse(path)
    spec = parse_spec(cfg.ablation)
    assert len(spec.seeds) >= 3
    planned = plan(parser, cfg, spec, tmp_path)  # validates every arm with the parser that will train it

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


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_paper_ablation_keeps_its_recipe_and_its_embedded_twin_s_design(name):
    paper, recipe = _load(PAPER / name), _load(EXPERIMENTS / PAPER_RECIPES[name])
    for section in ("trainer", "data", "seed_everything"):
        assert paper[section] == recipe[section], f"{section} differs from {PAPER_RECIPES[name]}"
    for key in set(paper["model"]) | set(recipe["model"]):
        if key != "net":
            assert paper["model"].get(key) == recipe["model"].get(key), f"model.{key} differs"
    assert paper["model"]["net"]["class_path"] == recipe["model"]["net"]["class_path"]

    embedded = _load(EXPERIMENTS / name)["ablation"]
    assert paper["ablation"] == embedded, "the paper-scale ablation runs the same design as the embedded one"


# -- a training step -------------------------------------------------------------------------------------------------


def _smoke_args(path: Path) -> list[str]:
    """Command-line overrides that bring a paper-scale file to the embedded digits on the CPU."""
    cfg = _load(path)
    args = ["--ablation", "null"] if "ablation" in cfg else []
    if cfg["data"]["class_path"].endswith("DigitsDataModule"):
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


# The paper-scale ablations are left out: their trainer, data and optimisation equal a family file's (tested
# above), which runs here, and every arm's network is built above; a step each would add minutes and no coverage.
@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent != PAPER], ids=_rel)
def test_config_runs_a_training_and_a_validation_step(path, tmp_path):
    code = main(["fit", "--config", str(path), "--trainer.fast_dev_run", "1",
                 "--trainer.default_root_dir", str(tmp_path), *_smoke_args(path)])
    assert code == 0
