"""Completing a trial is re-entrant: running a finished trial again, for any reason, writes the same result and
trains nothing."""

from __future__ import annotations

import json

import pytest

from tests.faults.trials import make_trial, result, state
from tests.helpers.cli import cli


def learnt(res: dict) -> dict:
    return {k: v for k, v in res["metrics"].items() if "samples_per_sec" not in k}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_finished_trial_run_again_keeps_its_result_and_trains_nothing(tmp_path):
    trial_dir = make_trial(tmp_path / "abl", trainer={"max_epochs": 1})
    cli("trial", str(trial_dir))
    first = result(trial_dir)
    last = trial_dir / "checkpoints" / "last.ckpt"
    trained = last.stat().st_mtime_ns
    assert state(trial_dir)["state"] == "done" and {"val/acc1", "train/loss"} <= set(first["metrics"])

    # Killed between the end of training and its ledger entry: state.json still says running.
    (trial_dir / "state.json").write_text(json.dumps({**state(trial_dir), "state": "running"}))
    again = cli("trial", str(trial_dir))
    assert "epoch 1/" not in again.stderr, "a finished trial trained again"
    assert state(trial_dir)["state"] == "done" and state(trial_dir)["attempts"] == 2
    assert learnt(result(trial_dir)) == learnt(first)
    assert (result(trial_dir)["epochs"], result(trial_dir)["global_step"]) == (first["epochs"], first["global_step"])

    # result.json deleted by hand (or lost to a full disk): the final checkpoint writes it again.
    (trial_dir / "result.json").unlink()
    cli("trial", str(trial_dir))
    assert state(trial_dir)["state"] == "done"
    assert learnt(result(trial_dir)) == learnt(first)
    assert last.stat().st_mtime_ns == trained, "the final checkpoint was written again"
