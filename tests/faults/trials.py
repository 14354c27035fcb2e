"""A trial directory as the ablation driver writes it, around the tiny ResNet config."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.helpers.cli import CONFIGS


def make_trial(root: Path, name: str = "t0", **overrides: dict) -> Path:
    """``<root>/<name>/config.yaml`` training into its own directory; ``overrides`` update the config's sections."""
    trial_dir = root / name
    trial_dir.mkdir(parents=True)
    config = yaml.safe_load((CONFIGS / "tiny_resnet.yaml").read_text())
    for section, values in overrides.items():
        config[section].update(values)
    config["trainer"]["default_root_dir"] = str(trial_dir)
    (trial_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (trial_dir / "trial.json").write_text(json.dumps({"id": name, "arm": "baseline", "seed": 0, "overrides": {},
                                                      "is_baseline": True}))
    (root / "ablation.json").write_text(json.dumps({"name": root.name, "design": "list", "metric": "val/acc1",
                                                    "baseline": "baseline", "factors": {}, "trials": [name]}))
    return trial_dir


def state(trial_dir: Path) -> dict:
    return json.loads((trial_dir / "state.json").read_text())


def result(trial_dir: Path) -> dict:
    return json.loads((trial_dir / "result.json").read_text())
