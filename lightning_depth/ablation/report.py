"""``compare DIR``: every arm of an ablation as mean ± std over seeds, with seed-paired deltas to the baseline.

Reads only the trial directories (``result.json``, ``state.json``, ``metrics*.csv``), so it works offline, on
partial results while trials are still running, and from any machine that sees the directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_depth.ablation.ledger import STATES, Ablation, Trial, find_ablation, load_ablation, read_curves
from lightning_depth.ablation.stats import CI_LABEL, metric_mode, paired_delta, summarize
from lightning_depth.errors import UsageError

FORMATS = ("markdown", "csv", "latex", "json")
BEST = "_best"  # "val/acc1_best" is the best epoch's val/acc1, as logged during training
MIN_EDF_TRIALS = 3  # per arm: fewer points do not make a distribution worth drawing


@dataclass
class MetricStats:
    """One metric of one arm: mean ± std over its trials, and the paired delta to the baseline (None for it)."""

    mean: float
    std: float
    n: int
    delta: float | None = None
    ci95: tuple[float, float] | None = None
    n_paired: int = 0


@dataclass
class ArmReport:
    """One arm: state counts, model size and cost, and statistics for every metric its results contain."""

    name: str
    is_baseline: bool
    counts: dict[str, int]
    params: int | None = None
    macs: int | None = None
    wall_time_s: float | None = None
    metrics: dict[str, MetricStats] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.counts.get("done", 0)


@dataclass
class Report:
    """A comparison of every arm of one ablation on one metric; ``keys`` orders the metrics (the chosen one first)."""

    ablation: Ablation
    metric: str
    baseline: str | None
    arms: list[ArmReport]
    keys: list[str]
    percent: set[str]
    totals: dict[str, int]
    ci: str = CI_LABEL


def build_report(ablation_dir: str | os.PathLike, metric: str | None = None) -> Report:
    """Collect every arm's results; ``metric`` defaults to the ablation's own (``val/acc1`` unless it chose another)."""
    ablation = load_ablation(find_ablation(ablation_dir))
    metric = metric or ablation.metric
    values = {t.id: _trial_values(t) for t in ablation.trials if t.status == "done"}
    keys = _ordered_keys(metric, {k for v in values.values() for k in v})
    if values and metric not in keys and metric + BEST not in keys:
        raise UsageError(f"metric {metric} is in no result.json; available: {', '.join(sorted(keys))}")
    by_arm = {arm: [t for t in ablation.trials if t.arm == arm] for arm in ablation.arms}
    baseline = ablation.baseline if ablation.baseline in by_arm else None
    base_values = _per_seed(by_arm.get(baseline, []), values)
    arms = []
    for name, trials in by_arm.items():
        per_key = _per_seed(trials, values)
        arm = ArmReport(name, name == baseline, _counts(trials))
        done = [t for t in trials if t.id in values]
        arm.params = next((int(t.result["params"]) for t in done if _is_num(t.result.get("params"))), None)
        arm.macs = next((int(t.result["macs"]) for t in done if _is_num(t.result.get("macs"))), None)
        walls = [float(t.result["wall_time_s"]) for t in done if _is_num(t.result.get("wall_time_s"))]
        arm.wall_time_s = sum(walls) / len(walls) if walls else None
        for key in keys:
            arm.metrics[key] = _metric_stats(per_key.get(key, {}), base_values.get(key, {}), name == baseline)
        arms.append(arm)
    percent = {k for k in keys if _is_fraction_accuracy(k, [v[k] for v in values.values() if k in v])}
    return Report(ablation, metric, baseline, arms, keys, percent, _counts(ablation.trials))


def render(report: Report, fmt: str = "markdown") -> str:
    """The report as ``markdown`` (mean ± std cells), ``csv`` (numbers, one row per arm), ``latex`` or ``json``."""
    renderers = {"markdown": _markdown, "csv": _csv, "latex": _latex, "json": _json}
    if fmt not in renderers:
        raise UsageError(f"unknown format {fmt}; choose one of {', '.join(FORMATS)}")
    return renderers[fmt](report)


def write_plots(report: Report, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Learning curves per arm (mean over seeds, min–max band) and an error EDF of the arms with ≥ 3 done runs.

    Plots are a convenience: any failure is reported on stderr and never breaks the report.
    """
    out = Path(out_dir) if out_dir is not None else report.ablation.path
    written: list[Path] = []
    try:
        curves = {t.id: read_curves(t.dir) for t in report.ablation.trials if t.dir.is_dir()}
        for key in dict.fromkeys([report.metric, "val/loss", "train/loss"]):
            path = _plot_curves(report, key, curves, out)
            if path:
                written.append(path)
        path = _plot_edf(report, out)
        if path:
            written.append(path)
    except Exception as err:  # plotting must never cost the user the table
        print(f"warning: plots skipped: {type(err).__name__}: {err}", file=sys.stderr)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lightning-depth compare", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="an ablation directory (with ablation.json) or a directory holding exactly one")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--metric", default=None, help="metric to compare (default: the ablation's, e.g. val/acc1)")
    parser.add_argument("--no-plots", action="store_true", help="do not write PNG plots into DIR")
    args = parser.parse_args(argv)
    report = build_report(args.dir, args.metric)
    print(render(report, args.format))
    if not args.no_plots:
        for path in write_plots(report):
            print(f"wrote {path}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- collecting


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _trial_values(trial: Trial) -> dict[str, float]:
    """``result.json`` flattened: ``metric`` -> final value, ``metric_best`` -> best value."""
    metrics = (trial.result or {}).get("metrics") or {}
    out = {m: float(e["final"]) for m, e in metrics.items() if isinstance(e, dict) and _is_num(e.get("final"))}
    # A "best" recorded beside the final value wins over a separately logged "<metric>_best".
    out.update({m + BEST: float(e["best"]) for m, e in metrics.items()
                if isinstance(e, dict) and _is_num(e.get("best"))})
    return out


def _ordered_keys(metric: str, keys: set[str]) -> list[str]:
    """The chosen metric and its best first, then validation, test and training metrics, each alphabetically."""
    first = [k for k in (metric, metric + BEST) if k in keys]
    split = {"val": 0, "test": 1, "train": 2}
    rest = sorted(set(keys) - set(first), key=lambda k: (split.get(k.split("/", 1)[0], 3), k))
    return first + rest


def _per_seed(trials: list[Trial], values: dict[str, dict[str, float]]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for trial in trials:
        for key, value in values.get(trial.id, {}).items():
            out.setdefault(key, {})[int(trial.seed if trial.seed is not None else -1)] = value
    return out


def _metric_stats(arm: dict[int, float], baseline: dict[int, float], is_baseline: bool) -> MetricStats:
    summary = summarize(arm.values())
    stats = MetricStats(summary.mean, summary.std, summary.n)
    delta = None if is_baseline else paired_delta(arm, baseline)
    if delta is not None:
        stats.delta, stats.ci95, stats.n_paired = delta.mean, delta.ci, delta.n
    return stats


def _counts(trials: list[Trial]) -> dict[str, int]:
    return {state: sum(t.status == state for t in trials) for state in STATES}


def _is_fraction_accuracy(key: str, values: list[float]) -> bool:
    """Accuracies logged as fractions are shown in percent; anything already above 1 was logged in percent."""
    return "acc" in key.rsplit("/", 1)[-1] and bool(values) and all(0.0 <= v <= 1.0 for v in values)


# ---------------------------------------------------------------- rendering


def _scale(report: Report, key: str, value: float | None) -> float | None:
    return None if value is None else value * 100 if key in report.percent else value


def _fmt(report: Report, key: str, value: float | None, sign: bool = False) -> str:
    value = _scale(report, key, value)
    if value is None or not math.isfinite(value):
        return "—"
    digits = 2 if key in report.percent else 4
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _mean_std(report: Report, key: str, stats: MetricStats | None) -> str:
    if stats is None or stats.n == 0:
        return "—"
    if stats.n == 1:  # one run has no spread to show
        return _fmt(report, key, stats.mean)
    return f"{_fmt(report, key, stats.mean)} ± {_fmt(report, key, stats.std)}"


def _delta(report: Report, key: str, stats: MetricStats | None) -> str:
    if stats is None or stats.delta is None:
        return "—"
    if stats.ci95 is None:
        return f"{_fmt(report, key, stats.delta, sign=True)} (1 seed)"
    low, high = (_fmt(report, key, v, sign=True) for v in stats.ci95)
    return f"{_fmt(report, key, stats.delta, sign=True)} [{low}, {high}]"


def _name(key: str) -> str:
    return key[: -len(BEST)] + " best" if key.endswith(BEST) else key


def _label(report: Report, key: str) -> str:
    arrow = "↓" if metric_mode(key) == "min" else "↑"
    unit = " (%)" if key in report.percent else ""
    return f"{_name(key)}{unit} {arrow}"


def _human(value: float | None, units: tuple[str, ...] = ("", "K", "M", "G", "T")) -> str:
    if value is None:
        return "—"
    for unit in units:
        if abs(value) < 1000 or unit == units[-1]:
            return f"{value:.3g}{unit}"
        value /= 1000
    return "—"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells shared by the Markdown and LaTeX tables."""
    main = [k for k in (report.metric, report.metric + BEST) if k in report.keys]
    others = [k for k in ("val/acc1", "val/loss") if k in report.keys and k not in main]
    others += [k for k in report.keys if k.startswith("test/") and not k.endswith(BEST) and k not in main]
    headers = ["arm", "n", "not done"]
    for key in main:
        headers += [_label(report, key), f"Δ {_name(key)} [95% CI]"]
    headers += [_label(report, k) for k in others] + ["params", "MACs", "time"]
    rows = []
    for arm in report.arms:
        pending = ", ".join(f"{arm.counts[s]} {s}" for s in STATES if s != "done" and arm.counts.get(s))
        row = [arm.name + (" (baseline)" if arm.is_baseline else ""), str(arm.n), pending or "—"]
        for key in main:
            row += [_mean_std(report, key, arm.metrics.get(key)), _delta(report, key, arm.metrics.get(key))]
        row += [_mean_std(report, k, arm.metrics.get(k)) for k in others]
        rows.append(row + [_human(arm.params), _human(arm.macs), _duration(arm.wall_time_s)])
    return headers, rows


def _preamble(report: Report) -> list[str]:
    better = "lower" if metric_mode(report.metric) == "min" else "higher"
    units = "accuracies in %, deltas in percentage points; " if report.percent else ""
    totals = ", ".join(f"{report.totals[s]} {s}" for s in STATES)
    return [
        f"Ablation {report.ablation.name}: {report.metric} ({better} is better), "
        f"baseline arm: {report.baseline or '—'}",
        f"mean ± std over n done seeds (sample std); {units}Δ = difference to the baseline paired by seed, "
        f"CI: {report.ci}; final = last epoch, best = best epoch",
        f"trials: {totals} (of {len(report.ablation.trials)})",
    ]


def _markdown(report: Report) -> str:
    headers, rows = _table(report)
    lines = [f"### {_preamble(report)[0]}", "", *(p + "  " for p in _preamble(report)[1:]), ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
          "—": "--", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}


def _tex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def _latex(report: Report) -> str:
    headers, rows = _table(report)
    lines = [f"% {_tex(p)}" for p in _preamble(report)]
    lines += [r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\hline"]
    lines += [" & ".join(_tex(h) for h in headers) + r" \\", r"\hline"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in rows]
    return "\n".join(lines + [r"\hline", r"\end{tabular}"])


def _num(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _csv(report: Report) -> str:
    """Numbers as logged (fractions stay fractions), one row per arm; empty cells where undefined."""
    columns = ["arm", "is_baseline", *STATES, "params", "macs", "wall_time_s"]
    for key in report.keys:
        columns += [f"{key}_{part}" for part in ("mean", "std", "n", "delta", "ci95_low", "ci95_high")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for arm in report.arms:
        row: list[Any] = [arm.name, int(arm.is_baseline), *(arm.counts[s] for s in STATES)]
        row += [arm.params, arm.macs, _num(arm.wall_time_s)]
        for key in report.keys:
            m = arm.metrics[key]
            low, high = m.ci95 if m.ci95 else (None, None)
            row += [_num(m.mean), _num(m.std), m.n, _num(m.delta), _num(low), _num(high)]
        # 10 significant digits: the logged precision, without binary noise like 0.0010999999999999899
        writer.writerow(["" if v is None else f"{v:.10g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue().rstrip("\n")


def _json(report: Report) -> str:
    """The schema other tools read; NaN (an undefined mean or std) becomes null."""
    arms = []
    for arm in report.arms:
        metrics = {key: {"mean": _num(m.mean), "std": _num(m.std), "delta": _num(m.delta),
                         "ci95": [float(v) for v in m.ci95] if m.ci95 else None}
                   for key, m in arm.metrics.items()}
        arms.append({"arm": arm.name, "n": arm.n, "params": arm.params, "macs": arm.macs,
                     "wall_time_s": _num(arm.wall_time_s), "metrics": metrics})
    return json.dumps({"ablation": report.ablation.name, "baseline": report.baseline, "metric": report.metric,
                       "ci": report.ci, "arms": arms}, indent=2)


# ---------------------------------------------------------------- plots


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend switch inside a training process
    return fig, fig.add_subplot()


def _save(fig: Any, path: Path) -> Path:
    """Write next to the results atomically: concurrent reports never leave a truncated PNG."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _style(is_baseline: bool) -> dict[str, str]:
    return {"color": "black", "linestyle": "--"} if is_baseline else {}


def _file_key(key: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)


def _plot_curves(report: Report, key: str, curves: dict[str, dict[str, dict[int, float]]], out: Path) -> Path | None:
    per_arm = {arm.name: [curves[t.id][key] for t in report.ablation.trials
                          if t.arm == arm.name and key in curves.get(t.id, {})] for arm in report.arms}
    if not any(per_arm.values()):
        return None
    everything = [v for runs in per_arm.values() for run in runs for v in run.values()]
    scale = 100.0 if _is_fraction_accuracy(key, everything) else 1.0
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


def _plot_edf(report: Report, out: Path) -> Path | None:
    """Distribution of the final error over seeds per arm (Radosavovic et al. 2019, "On Network Design Spaces")."""
    from lightning_depth.ablation.stats import edf

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
