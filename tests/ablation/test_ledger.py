"""The ablation ledger: one small JSON file per fact, written atomically, read back tolerantly."""

import json
import os

import pytest

from lightning_depth.ablation import ledger
from lightning_depth.ablation.spec import expand, parse_spec
from lightning_depth.errors import UsageError
from tests.helpers.ablations import ACC, EPOCHS, PREACT, curve, make_ablation


def test_state_transitions_are_atomic_json_files(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert ledger.read_state(tmp_path) is None
    ledger.write_state(tmp_path, "pending")
    ledger.mark_running(tmp_path)
    ledger.mark_failed(tmp_path, "NaN loss at step 12")
    state = ledger.mark_running(tmp_path)
    assert (state.state, state.attempts, state.slurm_job, state.reason) == ("running", 2, "4242", None)
    ledger.mark_done(tmp_path)
    raw = json.loads((tmp_path / "state.json").read_text())
    assert set(raw) == {"state", "reason", "attempts", "updated", "host", "pid", "slurm_job"}
    assert raw["state"] == "done" and raw["attempts"] == 2 and raw["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind
    with pytest.raises(ValueError, match="one of pending"):
        ledger.write_state(tmp_path, "finished")


def test_writers_produce_the_layout_the_readers_expect(tmp_path):
    spec = parse_spec({"name": "preact", "factors": {PREACT: [False, True]}, "seeds": [0, 1]})
    pairs = [(arm, seed, f"{arm.name}-s{seed}") for seed in spec.seeds for arm in expand(spec)]
    for arm, seed, tid in pairs:
        ledger.write_trial(ledger.trial_dir(tmp_path, tid), tid, arm, seed)
    ledger.write_ablation(tmp_path, spec, [tid for _, _, tid in pairs])
    ablation = ledger.load_ablation(tmp_path)
    assert (ablation.name, ablation.baseline) == ("preact", "preact=false")
    assert ablation.arms == ["preact=false", "preact=true"]
    assert [(t.arm, t.seed, t.status) for t in ablation.trials][:2] == [("preact=false", 0, "pending"),
                                                                        ("preact=true", 0, "pending")]
    assert ablation.trials[1].overrides == {PREACT: True} and ablation.trials[0].is_baseline
    assert ledger.read_result(ablation.trials[0].dir) is None


def test_resumed_runs_count_each_epoch_once(done):
    tid = next(t.id for t in ledger.load_ablation(done).trials if t.arm == "baseline" and t.seed == 0)
    curves = ledger.read_curves(done / tid)
    assert sorted(curves["val/acc1"]) == list(range(EPOCHS))
    assert curves["val/acc1"][2] == pytest.approx(curve(ACC["baseline"][0], 2))  # version_1 wins over version_0
    assert curves["lr-SGD"][4] == 0.1 and "step" not in curves
    assert ledger.read_result(done / tid)["metrics"]["val/acc1"]["final"] == ACC["baseline"][0]


def test_find_ablation_accepts_a_parent_with_exactly_one(done, tmp_path):
    assert ledger.find_ablation(tmp_path) == done
    with pytest.raises(UsageError, match="no ablation found under"):
        ledger.find_ablation(tmp_path / "nowhere")
    make_ablation(tmp_path / "other")
    with pytest.raises(UsageError, match="several ablations under .*: other, preact; pass one of them"):
        ledger.find_ablation(tmp_path)
