"""compare and status on synthetic ablation directories written in the exact on-disk format of real runs."""

import csv
import json
import math
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_depth.ablation import ledger, plots, report
from lightning_depth.ablation.render import render
from lightning_depth.commands import status
from lightning_depth.errors import UsageError
from lightning_depth.evidence import evidence_path, save_evidence
from tests.helpers.ablations import ACC, PARTIAL, make_ablation

REPO = Path(__file__).resolve().parents[2]


def pct(values):
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


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
    assert "| arm | n | done | failed | diverged | pending |" in text
    assert "| baseline (baseline) | 3 | 3 | 0 | 0 | 0 |" in text
    assert pct(ACC["preact=true"]) in text
    assert "| val/acc1 (%) ↑ | Δ val/acc1 [95% CI] |" in text and "val/loss ↓" in text and "test/acc1 (%)" in text
    assert "+0.39 [" in text and "] (3 pairs) |" in text  # preact: mean paired difference 0.39 points, 3 seeds
    assert "0.27M" in text and "1.73M" in text and "40.81M" in text and "10.2 min" in text


def test_json_has_exactly_the_documented_shape(done):
    data = json.loads(render(report.build_report(done), "json"))
    assert set(data) == {"ablation", "baseline", "metric", "ci", "interrupted", "per_example_ci", "arms_compared",
                         "seeds_advice", "arms"}
    assert (data["ablation"], data["baseline"], data["metric"], data["ci"]) == (
        "preact", "baseline", "val/acc1", "paired t, 95%")
    for arm in data["arms"]:
        assert set(arm) == {"arm", "n", "done", "failed", "diverged", "pending", "running", "interrupted", "params",
                            "macs", "wall_time_s", "metrics"}
        assert {"val/acc1", "val/acc1_best", "val/loss", "test/acc1"} <= set(arm["metrics"])
        for key, m in arm["metrics"].items():
            # Accuracies also carry the per-example analysis (null here: these runs kept no per-example evidence).
            per_example = {"per_example"} if key in ("val/acc1", "val/acc1_best", "val/acc5", "val/acc5_best",
                                                     "test/acc1") else set()
            assert set(m) == {"mean", "std", "n", "delta", "n_pairs", "ci95", "same_seeds", "pairs_equal", "examples",
                              "p", "p_holm", "seeds_needed"} | per_example
    base, pre = data["arms"][0], data["arms"][1]
    assert base["metrics"]["val/acc1"]["delta"] is None and base["metrics"]["val/acc1"]["ci95"] is None
    assert pre["n"] == 3 and pre["metrics"]["val/acc1"]["mean"] == pytest.approx(statistics.mean(ACC["preact=true"]))
    assert (pre["done"], pre["failed"], pre["pending"], pre["metrics"]["val/acc1"]["n_pairs"]) == (3, 0, 0, 3)
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
    assert rep.totals == {"pending": 3, "running": 1, "interrupted": 0, "done": 4, "diverged": 0, "failed": 1}
    assert (arms["baseline"].n, arms["preact=true"].n, arms["block=bottleneck"].n) == (2, 2, 0)
    pre = arms["preact=true"].metrics["val/acc1"]
    assert pre.n_paired == 1 and pre.ci95 is None  # done seeds {0, 2} vs baseline {0, 1}: only seed 0 pairs
    text = render(rep, "markdown")
    assert "| baseline (baseline) | 2 | 2 | 0 | 0 | 1 (1 running) |" in text
    assert "| preact=true | 2 | 2 | 1 | 0 | 0 |" in text and "(1 pair) †" in text
    assert "| block=bottleneck | 0 | 0 | 0 | 0 | 3 | — |" in text
    assert "4 done, 0 diverged, 1 failed" in text
    empty = json.loads(render(rep, "json"))["arms"][2]
    assert empty["n"] == 0 and empty["params"] is None and empty["metrics"]["val/acc1"]["mean"] is None


def test_every_number_says_how_many_trials_it_rests_on(tmp_path):
    """Per arm: values used, done, failed, diverged, pending; per Δ: its seed pairs, and whether the means rest on
    the same seeds (here the baseline has seeds 0 and 1, preact=true 0 and 2: one pair)."""
    rep = report.build_report(make_ablation(tmp_path / "preact", states=PARTIAL))
    data = json.loads(render(rep, "json"))
    counts = {a["arm"]: tuple(a[k] for k in ("n", "done", "failed", "diverged", "pending", "running"))
              for a in data["arms"]}
    assert counts == {"baseline": (2, 2, 0, 0, 1, 1), "preact=true": (2, 2, 1, 0, 0, 0),
                      "block=bottleneck": (0, 0, 0, 0, 3, 0)}
    pre = data["arms"][1]["metrics"]["val/acc1"]
    assert (pre["n"], pre["n_pairs"], pre["same_seeds"], pre["ci95"]) == (2, 1, False, None)
    rows = {r["arm"]: r for r in csv.DictReader(render(rep, "csv").splitlines())}
    assert (rows["preact=true"]["n"], rows["preact=true"]["failed"], rows["preact=true"]["val/acc1_n_pairs"],
            rows["preact=true"]["val/acc1_same_seeds"]) == ("2", "1", "1", "0")
    text = render(rep, "markdown")
    assert "(1 pair) †" in text and "† the means of this arm or of the baseline include seeds" in text
    assert "% † the means of this arm" in render(rep, "latex")


def test_a_done_trial_without_the_metric_counts_as_done_but_not_in_n(done):
    trial = next(t for t in ledger.load_ablation(done).trials if t.arm == "preact=true")
    result = json.loads((trial.dir / "result.json").read_text())
    (trial.dir / "result.json").write_text(json.dumps({**result, "metrics": {}}))
    arm = next(a for a in report.build_report(done).arms if a.name == "preact=true")
    assert (arm.n, arm.counts["done"], arm.metrics["val/acc1"].n_paired) == (2, 3, 2)
    assert "| preact=true | 2 | 3 | 0 | 0 | 0 |" in render(report.build_report(done), "markdown")


def test_a_delta_on_which_every_seed_agrees_shows_no_interval_and_says_what_it_means(done):
    """preact=true scores exactly one more of the 270 validation examples than the baseline on every seed."""
    trials = ledger.load_ablation(done).trials
    base = {t.seed: t.value("val/acc1") for t in trials if t.arm == "baseline"}
    for trial in (t for t in trials if t.arm == "preact=true"):
        result = json.loads((trial.dir / "result.json").read_text())
        result["metrics"]["val/acc1"]["final"] = base[trial.seed] + 1 / 270
        (trial.dir / "result.json").write_text(json.dumps(result))
    save_evidence(evidence_path(trials[0].dir, "val_final"), np.arange(270), np.zeros(270), np.ones(270), 4, "val")
    rep = report.build_report(done)
    text = render(rep, "markdown")
    assert "+0.37 (same on all 3 pairs)" in text and "[+0.37, +0.37]" not in text
    assert ("one validation example is 0.37 points (N = 270), so the arms differ by 1 example(s) on every seed"
            in text)
    assert "not a certainty" in text
    pre = next(a for a in json.loads(render(rep, "json"))["arms"] if a["arm"] == "preact=true")
    assert (pre["metrics"]["val/acc1"]["ci95"], pre["metrics"]["val/acc1"]["pairs_equal"],
            pre["metrics"]["val/acc1"]["examples"]) == (None, True, 270)
    latex = render(rep, "latex")
    assert "same on all 3 pairs" in latex and "+0.37, +0.37" not in latex


def test_a_running_trial_whose_process_is_gone_is_interrupted_with_the_reason(tmp_path, capsys):
    root = make_ablation(tmp_path / "preact", states=PARTIAL)
    running = next(t for t in ledger.load_ablation(root).trials if t.status == "running")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a real process that has exited: its pid names nobody now
    record = json.loads((running.dir / "state.json").read_text())
    (running.dir / "state.json").write_text(json.dumps({**record, "host": socket.gethostname(), "pid": gone.pid}))
    assert status.main([str(root), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    row = next(r for r in data["trials"] if r["id"] == running.id)
    assert (row["state"], row["reason"]) == ("interrupted", f"pid {gone.pid} on {socket.gethostname()} is gone")
    assert data["totals"]["interrupted"] == 1 and data["totals"]["running"] == 0
    rep = report.build_report(root)
    text = render(rep, "markdown")
    assert "| baseline (baseline) | 2 | 2 | 0 | 0 | 1 (1 interrupted) |" in text
    assert f"Interrupted: {running.id} (baseline, seed 2): pid {gone.pid} on {socket.gethostname()} is gone" in text
    assert json.loads(render(rep, "json"))["interrupted"] == [
        {"id": running.id, "arm": "baseline", "seed": 2, "why": f"pid {gone.pid} on {socket.gethostname()} is gone"}]


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
    assert "9 trials: 3 pending, 1 running, 0 interrupted, 4 done, 0 diverged, 1 failed" in out
    assert "CUDA out of memory" in out and f"{ACC['baseline'][0]:.4f}" in out
    assert status.main([str(root), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"] == {"pending": 3, "running": 1, "interrupted": 0, "done": 4, "diverged": 0, "failed": 1}
    assert len(data["trials"]) == 9
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
    assert "| preact=true | 3 | 3 | 0 | 0 | 0 |" in res.stdout and res.stdout.startswith("### Ablation preact")
    assert not list(done.glob("*.png"))


def test_compare_on_a_bad_directory_is_one_line_and_exit_2(tmp_path):
    res = cli("compare", str(tmp_path / "missing"), "--no-plots")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: no ablation found under {tmp_path / 'missing'}; expected ablation.json written by "
        "`fit --config FILE` with an ablation: section"]
