"""compare and status on synthetic ablation directories written in the exact on-disk format of real runs."""

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_depth.ablation import ledger, plots, report
from lightning_depth.ablation.render import render
from lightning_depth.commands import status
from lightning_depth.ablation.spec import expand, parse_spec
from lightning_depth.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
PREACT, BLOCK = "model.net.init_args.preact", "model.net.init_args.block"
SEEDS = (0, 1, 2)
# Final val/acc1 per arm and seed (fractions, as torchmetrics logs them).
ACC = {
    "baseline": (0.9130, 0.9152, 0.9141),
    "preact=true": (0.9171, 0.9180, 0.9188),
    "block=bottleneck": (0.9205, 0.9190, 0.9221),
}
OVERRIDES = {
    "baseline": {PREACT: False, BLOCK: "basic"},
    "preact=true": {PREACT: True, BLOCK: "basic"},
    "block=bottleneck": {PREACT: False, BLOCK: "bottleneck"},
}
PARAMS = {"baseline": 272_474, "preact=true": 272_474, "block=bottleneck": 1_730_714}
EPOCHS = 5
CSV_COLUMNS = ["epoch", "step", "lr-SGD", "train/acc1", "train/loss", "val/acc1", "val/acc1_best", "val/acc5",
               "val/loss"]


def curve(final, epoch):
    return final - 0.05 * (EPOCHS - 1 - epoch) / (EPOCHS - 1)


def write_metrics_csv(path, final, epochs, corrupt_last=False):
    """Lightning CSVLogger layout: train and val rows are separate, empty where a metric was not logged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        for epoch in epochs:
            acc = 0.1 if corrupt_last and epoch == epochs[-1] else curve(final, epoch)
            step = (epoch + 1) * 390 - 1
            writer.writerow({"epoch": epoch, "step": step, "lr-SGD": 0.1, "train/loss": 1.1 - acc,
                             "train/acc1": acc + 0.02})
            writer.writerow({"epoch": epoch, "step": step, "val/acc1": acc, "val/acc1_best": acc,
                             "val/acc5": min(acc + 0.08, 1.0), "val/loss": 1.2 - acc})


def write_trial_dir(root, arm, seed, state, with_result=None, resumed=False):
    tid = f"{arm.replace('=', '-')}-s{seed}-{abs(hash((arm, seed))) % 16**10:010x}"
    d = root / tid
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"seed_everything: {seed}\n")
    (d / "trial.json").write_text(json.dumps({"id": tid, "arm": arm, "seed": seed, "overrides": OVERRIDES[arm],
                                              "is_baseline": arm == "baseline"}))
    (d / "state.json").write_text(json.dumps({"state": state, "reason": "CUDA out of memory" if state == "failed"
                                              else None, "attempts": 1, "updated": "2025-01-01T00:00:00+00:00",
                                              "host": "node1", "pid": 123, "slurm_job": None}))
    final = ACC[arm][seed]
    if resumed:  # preempted during epoch 2, resumed: epoch 2 appears in both versions, the second one counts
        write_metrics_csv(d / "csv" / "version_0" / "metrics.csv", final, [0, 1, 2], corrupt_last=True)
        write_metrics_csv(d / "csv" / "version_1" / "metrics.csv", final, [2, 3, 4])
    elif state != "pending":
        write_metrics_csv(d / "csv" / "version_0" / "metrics.csv", final, list(range(EPOCHS)))
    if with_result if with_result is not None else state == "done":
        metrics = {"val/acc1": {"best": final + 0.001, "final": final},
                   "val/loss": {"best": 1.2 - final - 0.01, "final": 1.2 - final},
                   "val/acc5": {"best": 0.997, "final": 0.996}, "test/acc1": {"final": final - 0.002}}
        (d / "result.json").write_text(json.dumps({
            "metrics": metrics, "params": PARAMS[arm], "macs": 40_810_000, "wall_time_s": 600.0 + 10 * seed,
            "epochs": EPOCHS, "global_step": EPOCHS * 390, "wandb_run_id": None}))
    return tid


def make_ablation(root, states=None, resumed=()):
    """Three arms (one_at_a_time) × three seeds; ``states`` maps (arm, seed) to a state other than done."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [write_trial_dir(root, arm, seed, (states or {}).get((arm, seed), "done"), resumed=(arm, seed) in resumed)
           for seed in SEEDS for arm in ACC]
    (root / "ablation.json").write_text(json.dumps({
        "name": "preact", "design": "one_at_a_time", "metric": "val/acc1", "baseline": "baseline",
        "factors": {PREACT: [False, True], BLOCK: ["basic", "bottleneck"]}, "trials": ids}))
    return root


@pytest.fixture
def done(tmp_path):
    return make_ablation(tmp_path / "preact", resumed={("baseline", 0)})


PARTIAL = {("baseline", 2): "running", ("preact=true", 1): "failed", ("block=bottleneck", 0): "pending",
           ("block=bottleneck", 1): "pending", ("block=bottleneck", 2): "pending"}


def pct(values):
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


# ---------------------------------------------------------------- ledger


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


# ---------------------------------------------------------------- report


def test_report_statistics_match_the_seeds(done):
    rep = report.build_report(done)
    arms = {a.name: a for a in rep.arms}
    assert [a.name for a in rep.arms] == list(ACC) and rep.baseline == "baseline" and arms["baseline"].is_baseline
    pre = arms["preact=true"].metrics["val/acc1"]
    diffs = [p - b for p, b in zip(ACC["preact=true"], ACC["baseline"])]
    assert pre.mean == pytest.approx(statistics.mean(ACC["preact=true"]))
    assert pre.std == pytest.approx(statistics.stdev(ACC["preact=true"]))
    assert pre.delta == pytest.approx(statistics.mean(diffs)) and pre.n_paired == 3
    half = 4.302652729911275 * statistics.stdev(diffs) / math.sqrt(3)
    assert pre.ci95 == pytest.approx((statistics.mean(diffs) - half, statistics.mean(diffs) + half))
    assert arms["preact=true"].metrics["val/acc1_best"].mean == pytest.approx(pre.mean + 0.001)
    assert arms["baseline"].metrics["val/acc1"].delta is None
    assert (arms["block=bottleneck"].params, arms["block=bottleneck"].macs) == (1_730_714, 40_810_000)
    assert arms["baseline"].wall_time_s == pytest.approx(610.0)
    assert rep.keys[:2] == ["val/acc1", "val/acc1_best"] and "test/acc1" in rep.keys
    assert {"val/acc1", "val/acc1_best", "test/acc1"} <= rep.percent and "val/loss" not in rep.percent


def test_markdown_shows_mean_std_in_percent_and_marks_the_baseline(done):
    text = render(report.build_report(done), "markdown")
    assert "accuracies in %" in text and "paired t, 95%" in text and "higher is better" in text
    assert "| baseline (baseline) | 3 | — |" in text
    assert pct(ACC["preact=true"]) in text
    assert "| val/acc1 (%) ↑ | Δ val/acc1 [95% CI] |" in text and "val/loss ↓" in text and "test/acc1 (%)" in text
    assert "+0.39 [" in text  # preact: mean paired difference 0.39 percentage points
    assert "0.27M" in text and "1.73M" in text and "40.81M" in text and "10.2 min" in text


def test_json_has_exactly_the_documented_shape(done):
    data = json.loads(render(report.build_report(done), "json"))
    assert set(data) == {"ablation", "baseline", "metric", "ci", "arms"}
    assert (data["ablation"], data["baseline"], data["metric"], data["ci"]) == (
        "preact", "baseline", "val/acc1", "paired t, 95%")
    for arm in data["arms"]:
        assert set(arm) == {"arm", "n", "params", "macs", "wall_time_s", "metrics"}
        assert {"val/acc1", "val/acc1_best", "val/loss", "test/acc1"} <= set(arm["metrics"])
        for m in arm["metrics"].values():
            assert set(m) == {"mean", "std", "delta", "ci95"}
    base, pre = data["arms"][0], data["arms"][1]
    assert base["metrics"]["val/acc1"]["delta"] is None and base["metrics"]["val/acc1"]["ci95"] is None
    assert pre["n"] == 3 and pre["metrics"]["val/acc1"]["mean"] == pytest.approx(statistics.mean(ACC["preact=true"]))
    assert len(pre["metrics"]["val/acc1"]["ci95"]) == 2


def test_csv_is_numeric_one_row_per_arm_and_latex_is_a_tabular(done):
    rep = report.build_report(done)
    rows = list(csv.DictReader(render(rep, "csv").splitlines()))
    assert [r["arm"] for r in rows] == list(ACC)
    assert float(rows[2]["val/acc1_mean"]) == pytest.approx(statistics.mean(ACC["block=bottleneck"]))
    assert rows[0]["val/acc1_delta"] == "" and float(rows[1]["val/acc1_ci95_low"]) > 0
    tex = render(rep, "latex")
    assert tex.splitlines()[3].startswith(r"\begin{tabular}{l") and tex.endswith(r"\end{tabular}")
    assert r"91.80 $\pm$ 0.09" in tex and r"$\Delta$ val/acc1 best [95\% CI]" in tex and r"lr\_" not in tex


def test_partial_results_report_what_has_arrived(tmp_path):
    rep = report.build_report(make_ablation(tmp_path / "preact", states=PARTIAL))
    arms = {a.name: a for a in rep.arms}
    assert rep.totals == {"pending": 3, "running": 1, "done": 4, "failed": 1}
    assert (arms["baseline"].n, arms["preact=true"].n, arms["block=bottleneck"].n) == (2, 2, 0)
    pre = arms["preact=true"].metrics["val/acc1"]
    assert pre.n_paired == 1 and pre.ci95 is None  # done seeds {0, 2} vs baseline {0, 1}: only seed 0 pairs
    text = render(rep, "markdown")
    assert "| preact=true | 2 | 1 failed |" in text and "(1 seed)" in text
    assert "| block=bottleneck | 0 | 3 pending | — |" in text
    assert "4 done, 1 failed" in text
    empty = json.loads(render(rep, "json"))["arms"][2]
    assert empty["n"] == 0 and empty["params"] is None and empty["metrics"]["val/acc1"]["mean"] is None


def test_plots_are_written_next_to_the_results(done):
    paths = plots.write_plots(report.build_report(done))
    names = sorted(p.name for p in paths)
    assert names == ["curves_train_loss.png", "curves_val_acc1.png", "curves_val_loss.png", "edf_val_acc1.png"]
    for p in paths:
        assert p.parent == done and p.stat().st_size > 1000 and p.read_bytes()[:4] == b"\x89PNG"


def test_edf_needs_three_done_runs_per_arm(tmp_path):
    rep = report.build_report(make_ablation(tmp_path / "preact", states=PARTIAL))
    assert plots.edf_plot(rep, tmp_path) is None


def test_a_plotting_failure_never_breaks_the_report(done, tmp_path, capsys):
    not_a_directory = tmp_path / "plots"
    not_a_directory.write_text("a file where the plots would go")
    assert plots.write_plots(report.build_report(done), not_a_directory) == []
    assert "plots skipped: NotADirectoryError" in capsys.readouterr().err


def test_unknown_metric_and_format_are_usage_errors(done):
    with pytest.raises(UsageError, match="metric val/acc9 is in no result.json; available: "):
        report.build_report(done, "val/acc9")
    with pytest.raises(UsageError, match="unknown format"):
        render(report.build_report(done), "html")


def test_lower_is_better_metrics_are_compared_as_such(done):
    text = render(report.build_report(done, "val/loss"), "markdown")
    assert "val/loss (lower is better)" in text and "| val/loss ↓ |" in text and "val/loss best ↓" in text


# ---------------------------------------------------------------- status


def test_status_lists_every_trial_and_totals(tmp_path, capsys):
    root = make_ablation(tmp_path / "preact", states=PARTIAL)
    assert status.main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "9 trials: 3 pending, 1 running, 4 done, 1 failed" in out
    assert "CUDA out of memory" in out and f"{ACC['baseline'][0]:.4f}" in out
    assert status.main([str(root), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"] == {"pending": 3, "running": 1, "done": 4, "failed": 1} and len(data["trials"]) == 9
    first = data["trials"][0]
    assert (first["arm"], first["seed"], first["state"], first["value"]) == ("baseline", 0, "done", ACC["baseline"][0])


def test_status_asks_squeue_about_slurm_jobs(tmp_path, monkeypatch, capsys):
    root = make_ablation(tmp_path / "preact", states=PARTIAL)
    running = next(t for t in ledger.load_ablation(root).trials if t.status == "running")
    ledger.write_state(running.dir, "running", slurm_job="777_2")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Answers like squeue -h -r -t all -j JOBS -o "%i %T" (the real one runs in tests/test_slurm.py).
    (bin_dir / "squeue").write_text('#!/bin/sh\ncase "$*" in *777_2*) echo "777_2 RUNNING";; *) exit 1;; esac\n')
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert status.main([str(root), "--format", "json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["trials"]}
    assert rows[running.id]["queue"] == "RUNNING" and rows[running.id]["slurm_job"] == "777_2"


# ---------------------------------------------------------------- command line


def cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lightning_depth", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_compare_prints_the_table(done):
    res = cli("compare", str(done.parent), "--no-plots")  # plots: test_plots_are_written_next_to_the_results
    assert res.returncode == 0, res.stderr
    assert "| preact=true | 3 |" in res.stdout and res.stdout.startswith("### Ablation preact")
    assert not list(done.glob("*.png"))


def test_compare_on_a_bad_directory_is_one_line_and_exit_2(tmp_path):
    res = cli("compare", str(tmp_path / "missing"), "--no-plots")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: no ablation found under {tmp_path / 'missing'}; expected ablation.json written by "
        "`fit --config FILE` with an ablation: section"]
