"""Per-example evidence: which validation and test examples a run classified correctly, kept compactly on disk.

Layout (``<run>`` is a run directory)::

    <run>/evidence/val_final.npz   the validation split at the last validation epoch
    <run>/evidence/val_best.npz    the validation split at the epoch with the best val/acc1 (the first of ties)
    <run>/evidence/test.npz        the test split, when ``test`` ran

Each file holds three arrays of one entry per example, sorted by ``index`` (the example's position in its split,
each example once): ``index`` (int32, int64 past 2^31 examples), ``pred`` (the predicted class: int16, int32 past
32,767 classes) and ``correct`` (uint8 flags: bit 0 top-1 correct, bit 1 top-5 correct), plus ``epoch`` and
``split``. Seven bytes per example before compression: the 50,000 ImageNet validation images take under 350 KB.
Two runs evaluated on the same split compare example by example through ``index``.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightning_depth.atomic import write_atomic

EVIDENCE_DIR = "evidence"
TOP1, TOP5 = 1, 2  # bits of ``correct``
# An accuracy in result.json -> (the file that holds its examples, the bit that says an example counts as correct).
# val/acc5's best epoch may differ from val/acc1's, so only the best val/acc1 has its examples kept.
SOURCES = {
    "val/acc1": ("val_final", TOP1),
    "val/acc5": ("val_final", TOP5),
    "val/acc1_best": ("val_best", TOP1),
    "test/acc1": ("test", TOP1),
    "test/acc5": ("test", TOP5),
}


@dataclass(frozen=True)
class Evidence:
    """One split of one run, example by example, sorted by ``index``."""

    index: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    epoch: int
    split: str

    def hits(self, bit: int = TOP1) -> np.ndarray:
        """Whether each example counts as correct (top-1 by default), as a boolean array."""
        return (self.correct & bit).astype(bool)


def evidence_path(run_dir: str | os.PathLike, name: str) -> Path:
    """Where a run keeps one evidence file: ``val_final``, ``val_best`` or ``test``."""
    return Path(run_dir) / EVIDENCE_DIR / f"{name}.npz"


def save_evidence(path: str | os.PathLike, index: np.ndarray, pred: np.ndarray, correct: np.ndarray, epoch: int,
                  split: str) -> Path:
    """Write one evidence file atomically; an example listed twice (a distributed sampler pads its last batch with
    repeats) is kept once."""
    index = np.asarray(index, dtype=np.int64)
    index, first = np.unique(index, return_index=True)
    pred = np.asarray(pred)[first]
    big = index.size and index[-1] >= 2**31
    classes = pred.max(initial=0) >= 2**15
    buf = io.BytesIO()
    np.savez_compressed(buf, index=index.astype(np.int64 if big else np.int32),
                        pred=pred.astype(np.int32 if classes else np.int16),
                        correct=np.asarray(correct, dtype=np.uint8)[first], epoch=np.int64(epoch),
                        split=np.str_(split))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, buf.getvalue())


def load_evidence(path: str | os.PathLike) -> Evidence | None:
    """An evidence file read back, or None when it is absent or damaged (one bad file must not hide the others)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ev = Evidence(data["index"].astype(np.int64), data["pred"], data["correct"], int(data["epoch"]),
                          str(data["split"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    if not (ev.index.shape == ev.pred.shape == ev.correct.shape) or np.any(np.diff(ev.index) <= 0):
        return None
    return ev
