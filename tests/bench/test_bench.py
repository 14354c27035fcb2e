"""bench: interleaved rounds and paired ratios, the report's shape (table and JSON), one-line usage errors, probes
that start without Lightning, and the pipeline's own fit. Timings are never compared with the goals here: goals are
the benchmark's output, and a test machine's speed is not under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lightning_depth.__main__ import main as cli_main
from lightning_depth.ablation.launch_local import parse_summary, summary
from lightning_depth.bench import command, pipeline, sweep
from lightning_depth.bench.probes import run_probe
from lightning_depth.bench.timing import Row, interleave, paired
from lightning_depth.errors import UsageError

ROW_KEYS = {"section", "name", "a", "b", "unit", "ratio", "low", "high", "n", "goal", "note", "met", "settled"}


def test_interleave_alternates_the_order_of_arms_between_rounds():
    calls = []
    arms = {name: (lambda name=name: calls.append(name) or 1.0) for name in "abc"}
    times = interleave(arms, deadline=float("inf"), most=3)
    assert calls == list("abc" "cba" "abc")
    assert times == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}


def test_interleave_runs_one_round_even_past_the_deadline():
    times = interleave({"a": lambda: 1.0, "b": lambda: 2.0}, deadline=0.0, most=5)
    assert times == {"a": [1.0], "b": [2.0]}


def test_paired_reports_the_median_of_per_round_ratios():
    row = paired("models", "x", [1.0, 3.0, 2.2], [1.0, 1.0, 2.0], goal=1.02)
    assert row.ratio == pytest.approx(1.1) and (row.low, row.high, row.n) == (1.0, 3.0, 3)
    assert row.met is False
    speedup = paired("fastpaths", "x", [0.5, 0.5], [1.0, 1.0], invert=True)
    assert speedup.ratio == pytest.approx(2.0) and speedup.met is None


def test_a_verdict_is_settled_only_when_every_round_agrees_with_the_median():
    within = paired("models", "x", [1.0, 1.01], [1.0, 1.0], goal=1.02)
    straddles = paired("models", "x", [0.9, 1.01, 1.1], [1.0, 1.0, 1.0], goal=1.02)
    beyond = paired("models", "x", [1.05, 1.1], [1.0, 1.0], goal=1.02)
    assert (within.met, within.settled) == (True, True)
    assert (straddles.met, straddles.settled) == (True, False)
    assert (beyond.met, beyond.settled) == (False, True)
    text = command.format_table(report_with([straddles]))
    assert text.splitlines()[-1].endswith("yes?")


def test_paired_without_a_measurable_reference_has_no_ratio():
    row = paired("memory", "x", [0.0], [0.0], unit="MiB")
    assert row.ratio is None and row.n == 0


def report_with(rows: list[Row]) -> dict:
    return {"machine": command.machine(), "elapsed_s": 1.0,
            "rows": [{**vars(r), "met": r.met, "settled": r.settled} for r in rows]}


def test_table_has_ratio_range_goal_and_verdict_columns():
    rows = [paired("pipeline", "fit / plain", [1.0, 1.02], [1.0, 1.0], goal=1.02),
            Row("data", "Digits share", 100.0, 10.0, "img/s", 0.05, 0.04, 0.06, 2, 0.10),
            Row("fastpaths", "compile", None, None, "s", None, note="skipped")]
    text = command.format_table(report_with(rows))
    header = next(line for line in text.splitlines() if line.startswith("section"))
    assert header.split() == ["section", "comparison", "A", "B", "ratio", "range", "n", "goal", "met"]
    assert "1.010" in text and "<= 1.02" in text and " yes\n" in text  # median of 1.00 and 1.02, both within
    assert "5.0%" in text and "<= 10%" in text
    assert "compile: skipped" in text


def test_every_section_is_a_module_with_a_share_of_the_budget():
    assert set(command.SHARES) == set(command.SECTIONS)
    assert sum(command.SHARES.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("argv, message", [
    (["--sections", "pipeline,nope"], "unknown section"),
    (["--budget", "0"], "--budget"),
    (["--threads", "-1"], "--threads"),
    (["--format", "yaml"], "invalid choice"),
    (["--no-such-option"], "unrecognized"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(UsageError, match=message):
        command.main(argv)
    assert cli_main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench:") and "\n" not in err


def test_quick_fastpaths_report_as_json(capsys):
    assert command.main(["--quick", "--sections", "fastpaths", "--rounds", "1", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) >= {"machine", "settings", "sections", "elapsed_s", "rows"}
    assert report["sections"] == ["fastpaths"] and report["settings"]["quick"] is True
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(report["machine"])
    names = [r["name"] for r in report["rows"]]
    assert [n.split()[0] for n in names] == ["channels_last", "bf16", "torch.compile"]
    for row in report["rows"]:
        assert set(row) == ROW_KEYS
    assert report["rows"][0]["ratio"] > 0 and report["rows"][0]["n"] == 1
    assert report["rows"][2]["ratio"] is None and "skipped" in report["rows"][2]["note"]


def test_probes_start_without_lightning():
    code = ("import sys; import lightning_depth.bench.probes; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_memory_probe_reports_peak_and_step_time_from_a_fresh_process():
    args = {"threads": 1, "model": "densenet121", "batch": 2, "size": 32, "steps": 1, "memory_efficient": True}
    result = run_probe("memory_probe", args, timeout=120)
    assert not isinstance(result, str), result
    assert result["peak_mib"] > 0 and result["step_s"] > 0


def test_the_pipeline_fit_pairs_lightning_and_plain_windows(tmp_path):
    deadline = time.monotonic() + 600
    lightning, plain, what = pipeline.fit_interleaved(8, 2, 8, window=1, warmup=1, rounds=2, deadline=deadline,
                                                      root=tmp_path)
    assert len(lightning) == len(plain) == 2 and min(lightning + plain) > 0
    assert "Interleave" not in what and "WandbLogger" in what and "RunResult" in what
    assert "lightning_depth.bench.pipeline.InMemoryImages" in (tmp_path / "config.yaml").read_text()


def test_the_sweep_section_reads_the_launchers_summary_line(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"wall_time_s": 6.0}))
    line = summary([(tmp_path, 7.5), (tmp_path, 8.0)], 16.25, "forks of a fork server, forked from the launcher")
    assert line.startswith("sweep: 2 trials in 16.2 s, 12.0 s of it training; start-up 1.75 s per trial")
    assert parse_summary(f"earlier lines\n{line}\n") == {"trials": 2, "wall_s": 16.2, "training_s": 12.0,
                                                          "startup_s": 1.75}
    assert parse_summary("no summary here") is None


@pytest.mark.slow  # every section at tiny sizes, the sweep section's two sweeps of two tiny trials included: 2 min
def test_quick_bench_measures_every_section_and_runs_the_sweep_both_ways(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lightning_depth", "bench", "--quick", "--format", "json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert {row["section"] for row in report["rows"]} == set(command.SECTIONS) == set(report["sections"])
    header = next(line for line in command.format_table(report).splitlines() if line.startswith("section"))
    assert header.split() == ["section", "comparison", "A", "B", "ratio", "range", "n", "goal", "met"]

    fork, fresh, startup = (row for row in report["rows"] if row["section"] == "sweep")
    assert [r["name"].split(",")[1].strip() for r in (fork, fresh)] == ["fork server", "fresh process"]
    assert fork["goal"] == sweep.GOAL and fresh["goal"] is None
    assert fork["n"] == fresh["n"] == startup["n"] >= 1
    assert min(fork["ratio"], fresh["ratio"]) > 1  # a sweep costs more than its training
    assert "the whole command" in fork["note"] and "SLURM" in startup["note"]
    assert not list(tmp_path.iterdir()), "the bench writes only into its temporary directory, sweeps included"
