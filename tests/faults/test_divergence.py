"""A non-finite loss stops training at once; the trial is diverged, a result that no comparison counts as a value."""

from __future__ import annotations

import json

import pytest

from lightning_depth.ablation.report import build_report
from tests.faults.trials import make_trial, result, state
from tests.helpers.cli import cli


def strict_json(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_whose_loss_explodes_is_diverged_with_step_and_value(tmp_path):
    trial_dir = make_trial(tmp_path / "abl", model={"optimizer": {"class_path": "torch.optim.SGD",
                                                                  "init_args": {"lr": 1.0e12}}})
    proc = cli("trial", str(trial_dir))
    assert proc.returncode == 0  # a result, not a crash
    assert "training diverged: train/loss is" in proc.stderr
    assert "epoch 3/" not in proc.stderr, "training went on after the loss stopped being finite"

    res = strict_json((trial_dir / "result.json").read_text())
    assert res["status"] == "diverged"
    assert res["diverged"]["metric"] == "train/loss" and res["diverged"]["value"] in ("nan", "inf", "-inf")
    assert 1 <= res["diverged"]["step"] <= 12
    assert all("final" not in entry for entry in res["metrics"].values()), "a value from before the divergence"
    st = state(trial_dir)
    assert st["state"] == "diverged"
    assert f"at step {res['diverged']['step']}" in st["reason"] and "train/loss" in st["reason"]

    report = build_report(tmp_path / "abl")
    (arm,) = report.arms
    assert arm.counts["diverged"] == 1 and arm.n == 0
    assert all(stats.n == 0 for stats in arm.metrics.values())

    again = cli("trial", str(trial_dir))
    assert "is diverged; nothing to train" in again.stderr
    assert result(trial_dir) == res
