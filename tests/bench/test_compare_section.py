"""The bench's compare section: a finished ablation in the real on-disk layout, timed through the real command."""

import json
import time

from lightning_depth.ablation.paired import analyse
from lightning_depth.ablation.report import build_report
from lightning_depth.bench import compare
from lightning_depth.bench.timing import Config


def test_the_synthetic_ablation_reads_back_with_its_per_example_evidence(tmp_path):
    root = compare.write_ablation(tmp_path / "width", seeds=2, examples=500, epochs=3)
    report = build_report(root)
    assert len(report.ablation.trials) == 2 * compare.ARMS and report.totals["done"] == 2 * compare.ARMS
    per = analyse(report).get("width=64", "val/acc1").per_example
    assert (per.n_seeds, per.n_examples) == (2, 500)


def test_compare_is_timed_against_its_budget(tmp_path):
    (row,) = compare.measure(Config.make(True, rounds=1), time.monotonic() + 300, tmp_path)
    assert row.section == "compare" and row.note == "" and row.n == 1
    assert row.b == compare.BUDGET_S and row.ratio == row.a / compare.BUDGET_S and row.goal == 1.0
    written = json.loads((tmp_path / "compare" / "width" / "ablation.json").read_text())
    assert len(written["trials"]) == compare.ARMS * compare.QUICK[0]
