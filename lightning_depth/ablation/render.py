"""An ablation's :class:`~lightning_depth.ablation.report.Report` as text: Markdown, CSV, LaTeX or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from lightning_depth import fmt
from lightning_depth.ablation.ledger import STATES
from lightning_depth.ablation.report import MetricStats, Report
from lightning_depth.errors import UsageError
from lightning_depth.metrics import BEST_SUFFIX, metric_mode

FORMATS = ("markdown", "csv", "latex", "json")


def render(report: Report, fmt: str = "markdown") -> str:
    """The report as ``markdown`` (mean ± std cells), ``csv`` (numbers, one row per arm), ``latex`` or ``json``."""
    renderers = {"markdown": _markdown, "csv": _csv, "latex": _latex, "json": _json}
    if fmt not in renderers:
        raise UsageError(f"unknown format {fmt}; choose one of {', '.join(FORMATS)}")
    return renderers[fmt](report)



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
    return key[: -len(BEST_SUFFIX)] + " best" if key.endswith(BEST_SUFFIX) else key


def _label(report: Report, key: str) -> str:
    arrow = "↓" if metric_mode(key) == "min" else "↑"
    unit = " (%)" if key in report.percent else ""
    return f"{_name(key)}{unit} {arrow}"



def _table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells shared by the Markdown and LaTeX tables."""
    main = [k for k in (report.metric, report.metric + BEST_SUFFIX) if k in report.keys]
    others = [k for k in ("val/acc1", "val/loss") if k in report.keys and k not in main]
    others += [k for k in report.keys if k.startswith("test/") and not k.endswith(BEST_SUFFIX) and k not in main]
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
        rows.append(row + [fmt.count(arm.params), fmt.count(arm.macs), fmt.duration(arm.wall_time_s)])
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
