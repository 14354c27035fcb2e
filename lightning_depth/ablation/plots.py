"""An ablation's figures: learning curves per arm and the EDF of the final error over seeds, as PNG files."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

from lightning_depth.ablation.ledger import read_curves
from lightning_depth.ablation.report import Report, is_fraction_accuracy
from lightning_depth.ablation.stats import edf
from lightning_depth.atomic import write_atomic

MIN_EDF_TRIALS = 3  # per arm: fewer points do not make a distribution worth drawing


def write_plots(report: Report, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Learning curves per arm (mean over seeds, min–max band) and an error EDF of the arms with ≥ 3 done runs.

    Plots are a convenience: any failure is reported on stderr and never breaks the report.
    """
    out = Path(out_dir) if out_dir is not None else report.ablation.path
    written: list[Path] = []
    try:
        curves = {t.id: read_curves(t.dir) for t in report.ablation.trials if t.dir.is_dir()}
        for key in dict.fromkeys([report.metric, "val/loss", "train/loss"]):
            path = curves_plot(report, key, curves, out)
            if path:
                written.append(path)
        path = edf_plot(report, out)
        if path:
            written.append(path)
    except Exception as err:  # noqa: BLE001 - plotting must never cost the user the table
        print(f"warning: plots skipped: {type(err).__name__}: {err}", file=sys.stderr)
    return written


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch inside a training process
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> Path:
    """Write next to the results atomically: concurrent reports never leave a truncated PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return write_atomic(path, buf.getvalue())


def _style(is_baseline: bool) -> dict[str, str]:
    return {"color": "black", "linestyle": "--"} if is_baseline else {}


def _file_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def curves_plot(report: Report, key: str, curves: dict[str, dict[str, dict[int, float]]], out: Path) -> Path | None:
    per_arm = {arm.name: [curves[t.id][key] for t in report.ablation.trials
                          if t.arm == arm.name and key in curves.get(t.id, {})] for arm in report.arms}
    if not any(per_arm.values()):
        return None
    everything = [v for runs in per_arm.values() for run in runs for v in run.values()]
    scale = 100.0 if is_fraction_accuracy(key, everything) else 1.0
    fig, ax = _figure()
    for arm in report.arms:
        runs = per_arm[arm.name]
        epochs = sorted({e for run in runs for e in run})
        if not epochs:
            continue
        points = [[run[e] * scale for run in runs if e in run] for e in epochs]
        mean = [sum(p) / len(p) for p in points]
        line = ax.plot(epochs, mean, label=f"{arm.name} (n={len(runs)})", **_style(arm.name == report.baseline))[0]
        ax.fill_between(epochs, [min(p) for p in points], [max(p) for p in points], alpha=0.2, color=line.get_color())
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="epoch", ylabel=key + (" (%)" if scale != 1 else ""),
           title=f"{report.ablation.name}: {key}, mean over seeds (band: min–max)")
    ax.legend(fontsize="small")
    return _save(fig, out / f"curves_{_file_key(key)}.png")


def edf_plot(report: Report, out: Path) -> Path | None:
    """Distribution of the final error over seeds per arm (Radosavovic et al. 2019, "On Network Design Spaces")."""
    key = report.metric
    runs = {arm.name: [t.value(key) for t in report.ablation.trials if t.arm == arm.name and t.status == "done"]
            for arm in report.arms}
    runs = {name: [v for v in vals if v is not None] for name, vals in runs.items()}
    runs = {name: vals for name, vals in runs.items() if len(vals) >= MIN_EDF_TRIALS}
    if not runs:
        return None
    # Accuracy becomes error (in %), so that every EDF reads the same way: further left is better.
    accuracy = "acc" in key.rsplit("/", 1)[-1]
    fig, ax = _figure()
    for name, vals in runs.items():
        x, y = edf([100.0 * (1.0 - v) if key in report.percent else 100.0 - v for v in vals] if accuracy else vals)
        # Start each step at 0 on the left so the first run shows as a jump, as an EDF should.
        ax.step([x[0], *x], [0.0, *y], where="post", label=f"{name} (n={len(vals)})", **_style(name == report.baseline))
    ax.set(xlabel=f"error of {key} (%)" if accuracy else key, ylabel="fraction of runs ≤ x", ylim=(0, 1.02),
           title=f"{report.ablation.name}: EDF over seeds")
    ax.legend(fontsize="small")
    return _save(fig, out / f"edf_{_file_key(key)}.png")
