"""bench: interleaved rounds and paired ratios, the report's shape (table and JSON), one-line usage errors, the
data it writes, and benchmarks/gpu_check.py. Timings are never compared with the goals here: goals are the
benchmark's output, and a test machine's speed is not under test."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_depth import bench
from lightning_depth.cli import main as cli_main
from lightning_depth.data import CIFAR10DataModule, CIFAR100DataModule, ImageFolderDataModule
from lightning_depth.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"section", "name", "a", "b", "unit", "ratio", "low", "high", "n", "goal", "note", "met", "settled"}


def test_interleave_alternates_the_order_of_arms_between_rounds():
    calls = []
    arms = {name: (lambda name=name: calls.append(name) or 1.0) for name in "abc"}
    times = bench.interleave(arms, deadline=float("inf"), most=3)
    assert calls == list("abc" "cba" "abc")
    assert times == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}


def test_interleave_runs_one_round_even_past_the_deadline():
    times = bench.interleave({"a": lambda: 1.0, "b": lambda: 2.0}, deadline=0.0, most=5)
    assert times == {"a": [1.0], "b": [2.0]}


def test_paired_reports_the_median_of_per_round_ratios():
    row = bench.paired("models", "x", [1.0, 3.0, 2.2], [1.0, 1.0, 2.0], goal=1.02)
    assert row.ratio == pytest.approx(1.1) and (row.low, row.high, row.n) == (1.0, 3.0, 3)
    assert row.met is False
    speedup = bench.paired("fastpaths", "x", [0.5, 0.5], [1.0, 1.0], invert=True)
    assert speedup.ratio == pytest.approx(2.0) and speedup.met is None


def test_a_verdict_is_settled_only_when_every_round_agrees_with_the_median():
    within = bench.paired("models", "x", [1.0, 1.01], [1.0, 1.0], goal=1.02)
    straddles = bench.paired("models", "x", [0.9, 1.01, 1.1], [1.0, 1.0, 1.0], goal=1.02)
    beyond = bench.paired("models", "x", [1.05, 1.1], [1.0, 1.0], goal=1.02)
    assert (within.met, within.settled) == (True, True)
    assert (straddles.met, straddles.settled) == (True, False)
    assert (beyond.met, beyond.settled) == (False, True)
    text = bench.format_table(report_with([straddles]))
    assert text.splitlines()[-1].endswith("yes?")


def test_paired_without_a_measurable_reference_has_no_ratio():
    row = bench.paired("memory", "x", [0.0], [0.0], unit="MiB")
    assert row.ratio is None and row.n == 0


def report_with(rows: list[bench.Row]) -> dict:
    return {"machine": bench.machine(), "elapsed_s": 1.0,
            "rows": [{**vars(r), "met": r.met, "settled": r.settled} for r in rows]}


def test_table_has_ratio_range_goal_and_verdict_columns():
    rows = [bench.paired("pipeline", "fit / plain", [1.0, 1.02], [1.0, 1.0], goal=1.02),
            bench.Row("data", "Digits share", 100.0, 10.0, "img/s", 0.05, 0.04, 0.06, 2, 0.10),
            bench.Row("fastpaths", "compile", None, None, "s", None, note="skipped")]
    text = bench.format_table(report_with(rows))
    header = next(line for line in text.splitlines() if line.startswith("section"))
    assert header.split() == ["section", "comparison", "A", "B", "ratio", "range", "n", "goal", "met"]
    assert "1.010" in text and "<= 1.02" in text and " yes\n" in text  # median of 1.00 and 1.02, both within
    assert "5.0%" in text and "<= 10%" in text
    assert "compile: skipped" in text


@pytest.mark.parametrize("argv, message", [
    (["--sections", "pipeline,nope"], "unknown section"),
    (["--budget", "0"], "--budget"),
    (["--threads", "-1"], "--threads"),
    (["--format", "yaml"], "invalid choice"),
    (["--no-such-option"], "unrecognized"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(UsageError, match=message):
        bench.main(argv)
    assert cli_main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bench:") and "\n" not in err


def test_quick_fastpaths_report_as_json(capsys):
    assert bench.main(["--quick", "--sections", "fastpaths", "--rounds", "1", "--format", "json"]) == 0
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


def test_synthetic_cifar_is_read_by_both_cifar_modules(tmp_path):
    for module, per_file in ((CIFAR10DataModule, 12), (CIFAR100DataModule, 40)):
        root = bench.write_synthetic_cifar(tmp_path / module.folder, module, per_file=per_file, test=100)
        dm = module(root=str(root), val_split=0, num_workers=0)
        dm.setup("fit")
        assert len(dm.train_dataset) == 5 * per_file and len(dm.test_dataset) == 100


def test_image_folder_is_read_by_the_imagefolder_module(tmp_path):
    bench.write_image_folder(tmp_path, classes=2, per_class=3, val_per_class=1, size=(80, 60))
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=32, num_workers=0)
    dm.setup("fit")
    assert (dm.num_classes, len(dm.train_dataset), len(dm.val_dataset)) == (2, 6, 2)
    assert dm.train_dataset[0][0].shape == (3, 32, 32)


@pytest.mark.slow  # every section at tiny sizes: about a minute on a 2-core machine, more when it is busy
def test_quick_bench_prints_every_section_with_ratios(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lightning_depth", "bench", "--quick"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("section"))
    assert lines[header].split() == ["section", "comparison", "A", "B", "ratio", "range", "n", "goal", "met"]
    sections = {line.split()[0] for line in lines[header + 1:] if line.strip() and not line.startswith(" ")
                and line.split()[0] in bench.SECTIONS}
    assert sections == set(bench.SECTIONS)
    assert not list(tmp_path.iterdir()), "the bench writes only into its temporary directory"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_a_gpu_says_so_and_exits_cleanly(monkeypatch, capsys):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow  # ResNet-50, -20, -110 and two ResNet-164 runs at tiny sizes on the CPU
def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == json.loads(out.read_text())
    assert report["smoke"] is True and report["resnet50_eager"]["images_per_s"] > 0
    for key in ("resnet20_cifar", "resnet110_cifar"):
        assert report[key]["epoch_s"] > 0 and report[key]["steps"] == 2
    assert set(report["resnet164_cifar"]) == {"post", "pre"}
    assert report["ablation_projection"]["hours"] > 0
    assert "ablation projection" in done.stdout
