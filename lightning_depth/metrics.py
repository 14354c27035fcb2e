"""What lightning_depth knows about metrics: their names in a run's result file and which way is better."""

from __future__ import annotations

from typing import Literal

RESULT_FILE = "result.json"
BEST_SUFFIX = "_best"  # "val/acc1_best" is the best epoch's val/acc1, as logged during training
# Words that mark a metric where lower is better (val/loss, val/err1, test/nll, perplexity); all others: higher.
LOWER_IS_BETTER = ("loss", "err", "error", "nll", "perplexity")


def metric_mode(key: str) -> Literal["min", "max"]:
    """``min`` for losses and errors, ``max`` for accuracies and everything else."""
    leaf = key.rsplit("/", 1)[-1].lower()
    return "min" if any(word in leaf for word in LOWER_IS_BETTER) else "max"
