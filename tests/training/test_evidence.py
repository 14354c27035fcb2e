"""Per-example evidence: the file format, and what a real run keeps (validation at the last and best epoch, test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_depth.evidence import TOP1, TOP5, evidence_path, load_evidence, save_evidence
from tests.helpers.cli import cli


def test_evidence_round_trips_with_each_example_once_in_index_order(tmp_path):
    # A distributed sampler pads the last batch with repeats and hands out indices rank by rank.
    index = np.array([4, 0, 2, 1, 3, 0])
    pred = np.array([7, 1, 5, 3, 9, 1])
    correct = np.array([TOP1 | TOP5, 0, TOP5, TOP1 | TOP5, 0, 0], dtype=np.uint8)
    path = save_evidence(tmp_path / "evidence" / "val_final.npz", index, pred, correct, epoch=4, split="val")
    ev = load_evidence(path)
    assert ev.index.tolist() == [0, 1, 2, 3, 4] and ev.pred.tolist() == [1, 3, 5, 9, 7]
    assert ev.hits().tolist() == [False, True, False, False, True]
    assert ev.hits(TOP5).tolist() == [False, True, True, False, True]
    assert (ev.epoch, ev.split) == (4, "val")


def test_a_damaged_or_missing_file_reads_as_none(tmp_path):
    assert load_evidence(tmp_path / "missing.npz") is None
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    assert load_evidence(tmp_path / "broken.npz") is None


def test_an_imagenet_validation_set_takes_a_few_bytes_per_example(tmp_path):
    rng = np.random.default_rng(0)
    labels, pred = rng.integers(0, 1000, 50_000), rng.integers(0, 1000, 50_000)
    correct = (pred == labels).astype(np.uint8) * TOP1 + (rng.random(50_000) < 0.9).astype(np.uint8) * TOP5
    path = save_evidence(tmp_path / "val_final.npz", np.arange(50_000), pred, correct, 89, "val")
    assert path.stat().st_size < 7 * 50_000
    assert np.array_equal(load_evidence(path).pred, pred)


@pytest.mark.slow
def test_fit_keeps_the_final_and_best_validation_epoch_and_test_the_test_split(tmp_path, tiny_config):
    run = tmp_path / "run"
    cli("fit", "--config", str(tiny_config), "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "2")
    cli("test", "--config", str(tiny_config), "--trainer.default_root_dir", str(run), "--trainer.limit_test_batches",
        "2")
    metrics = json.loads((run / "result.json").read_text())["metrics"]

    from lightning_depth.data import DigitsDataModule

    data = DigitsDataModule(image_size=8, batch_size=32)
    data.setup("fit")
    for name, split, acc1, acc5 in [
        ("val_final", "val", metrics["val/acc1"]["final"], metrics["val/acc5"]["final"]),
        ("val_best", "val", metrics["val/acc1"]["best"], None),
        ("test", "test", metrics["test/acc1"]["final"], metrics["test/acc5"]["final"]),
    ]:
        ev = load_evidence(evidence_path(run, name))
        assert ev.split == split and ev.index.tolist() == list(range(64))  # limit_*_batches: 2 batches of 32
        # Each example's correctness is its predicted class against its label, and together they are the metric.
        labels = getattr(data, f"{split}_dataset").labels.numpy()[ev.index]
        assert np.array_equal(ev.hits(), ev.pred == labels)
        assert ev.hits().mean() == pytest.approx(acc1)
        if acc5 is not None:
            assert ev.hits(TOP5).mean() == pytest.approx(acc5)
    assert load_evidence(evidence_path(run, "val_final")).epoch == 1
