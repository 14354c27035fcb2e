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
from lightning_depth.errors import UsageError
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
