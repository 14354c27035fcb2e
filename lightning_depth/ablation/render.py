"""An ablation's :class:`~lightning_depth.ablation.report.Report` as text: Markdown, CSV, LaTeX or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from lightning_depth import fmt
from lightning_depth.ablation.ledger import SHOWN_STATES
from lightning_depth.ablation.paired import CONFIDENCE, LABEL, POWER, Analysis, analyse
from lightning_depth.ablation.report import ArmReport, MetricStats, Report
from lightning_depth.errors import UsageError
from lightning_depth.metrics import BEST_SUFFIX, metric_mode

FORMATS = ("markdown", "csv", "latex", "json")
# What each arm's numbers rest on, in every format: values used, then trials by outcome (pending: no outcome yet).
COUNTS = ("n", "done", "failed", "diverged", "pending")
SAME_ON_ALL = "same on all"
NOT_SAME_SEEDS = "†"


def render(report: Report, fmt: str = "markdown", analysis: Analysis | None = None) -> str:
    """The report as ``markdown`` (mean ± std cells), ``csv`` (numbers, one row per arm), ``latex`` or ``json``;
    ``analysis`` (default: :func:`~lightning_depth.ablation.paired.analyse` of the report) adds the per-example
    intervals, the seeds advice and Holm's adjustment."""
    renderers = {"markdown": _markdown, "csv": _csv, "latex": _latex, "json": _json}
    if fmt not in renderers:
        raise UsageError(f"unknown format {fmt}; choose one of {', '.join(FORMATS)}")
    return renderers[fmt](report, analysis if analysis is not None else analyse(report))



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
    """``+0.39 [+0.10, +0.68] (3 pairs)``; one pair has no interval, nor do pairs that all agree; † when the means
    rest on seeds the Δ does not pair."""
    if stats is None or stats.delta is None:
        return "—"
    delta = _fmt(report, key, stats.delta, sign=True)
    mark = "" if stats.same_seeds else f" {NOT_SAME_SEEDS}"
    if stats.pairs_equal:
        return f"{delta} ({SAME_ON_ALL} {stats.n_paired} pairs){mark}"
    if stats.ci95 is None:
        return f"{delta} (1 pair){mark}"
    low, high = (_fmt(report, key, v, sign=True) for v in stats.ci95)
    return f"{delta} [{low}, {high}] ({stats.n_paired} pairs){mark}"


def _arm_counts(arm: ArmReport) -> dict[str, int]:
    """:data:`COUNTS` of one arm, plus ``running`` and ``interrupted`` (both also counted in ``pending``)."""
    return {"n": arm.n, "done": arm.counts.get("done", 0), "failed": arm.counts.get("failed", 0),
            "diverged": arm.counts.get("diverged", 0), "pending": arm.unfinished,
            "running": arm.counts.get("running", 0), "interrupted": arm.counts.get("interrupted", 0)}


def _pending_cell(arm: ArmReport) -> str:
    counts = _arm_counts(arm)
    detail = ", ".join(f"{counts[s]} {s}" for s in ("running", "interrupted") if counts[s])
    return f"{counts['pending']} ({detail})" if detail else str(counts["pending"])


def _interrupted(report: Report) -> list[Any]:
    """The trials whose process or job is gone while their ledger says running (:mod:`liveness` decided)."""
    return [t for t in report.ablation.trials if t.interrupted is not None]


def count_notes(report: Report) -> list[str]:
    """The lines under the table that say what a Δ cell rests on, where the cell alone cannot."""
    lines = []
    cells = [(arm, key, m) for arm in report.arms for key in (report.metric, report.metric + BEST_SUFFIX)
             if (m := arm.metrics.get(key)) is not None and m.delta is not None]
    for arm, key, m in cells:
        if not m.pairs_equal:
            continue
        line = (f"{arm.name}, Δ {_name(key)}: {SAME_ON_ALL} {m.n_paired} pairs means every seed gave exactly "
                f"{_fmt(report, key, m.delta, sign=True)}. That is what these seeds measured, not a certainty: seeds "
                "that agree say nothing of how far other seeds could move it, so no interval is shown")
        examples = report.examples.get(key)
        if examples and key in report.percent:
            line += (f"; one validation example is {100 / examples:.2f} points (N = {examples:,}), so the arms differ "
                     f"by {abs(m.delta) * examples:.0f} example(s) on every seed")
        lines.append(line + ".")
    if any(not m.same_seeds for _, _, m in cells):
        lines.append(f"{NOT_SAME_SEEDS} the means of this arm or of the baseline include seeds the other has no result "
                     "for; the Δ pairs only the seeds both have (its pairs), so it may differ from the difference of "
                     "the means.")
    lines += [f"Interrupted: {t.id} ({t.arm}, seed {t.seed}): {t.interrupted}; a relaunch resumes it."
              for t in _interrupted(report)]
    return lines


def _name(key: str) -> str:
    return key[: -len(BEST_SUFFIX)] + " best" if key.endswith(BEST_SUFFIX) else key


def _label(report: Report, key: str) -> str:
    arrow = "↓" if metric_mode(key) == "min" else "↑"
    unit = " (%)" if key in report.percent else ""
    return f"{_name(key)}{unit} {arrow}"



def _table(report: Report, analysis: Analysis) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells shared by the Markdown and LaTeX tables."""
    main = [k for k in (report.metric, report.metric + BEST_SUFFIX) if k in report.keys]
    others = [k for k in ("val/acc1", "val/loss") if k in report.keys and k not in main]
    others += [k for k in report.keys if k.startswith("test/") and not k.endswith(BEST_SUFFIX) and k not in main]
    headers = ["arm", *COUNTS]
    for key in main:
        headers += [_label(report, key), f"Δ {_name(key)} [95% CI]"] + _paired_headers(report, analysis, key)
    headers += [_label(report, k) for k in others] + ["params", "MACs", "time"]
    rows = []
    for arm in report.arms:
        counts = _arm_counts(arm)
        row = [arm.name + (" (baseline)" if arm.is_baseline else ""),
               *(str(counts[c]) for c in COUNTS[:-1]), _pending_cell(arm)]
        for key in main:
            row += [_mean_std(report, key, arm.metrics.get(key)), _delta(report, key, arm.metrics.get(key))]
            row += _paired_cells(report, analysis, key, arm.name)
        row += [_mean_std(report, k, arm.metrics.get(k)) for k in others]
        rows.append(row + [fmt.count(arm.params), fmt.count(arm.macs), fmt.duration(arm.wall_time_s)])
    return headers, rows


def _preamble(report: Report) -> list[str]:
    better = "lower" if metric_mode(report.metric) == "min" else "higher"
    units = "accuracies in %, deltas in percentage points; " if report.percent else ""
    totals = ", ".join(f"{report.totals[s]} {s}" for s in SHOWN_STATES)
    return [
        f"Ablation {report.ablation.name}: {report.metric} ({better} is better), "
        f"baseline arm: {report.baseline or '—'}",
        f"mean ± std over the n seeds with a value (sample std); {units}Δ = difference to the baseline paired by "
        f"seed, over the pairs (seeds both arms have), CI: {report.ci}; final = last epoch, best = best epoch",
        f"trials: {totals} (of {len(report.ablation.trials)})",
    ]


def _markdown(report: Report, analysis: Analysis) -> str:
    headers, rows = _table(report, analysis)
    lines = [f"### {_preamble(report)[0]}", "", *(p + "  " for p in _preamble(report)[1:]), ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    notes = count_notes(report) + paired_notes(report, analysis)
    return "\n".join(lines + ([""] + notes if notes else []))


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
          "—": "--", "↑": r"$\uparrow$", "↓": r"$\downarrow$"}


def _tex(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)


def _latex(report: Report, analysis: Analysis) -> str:
    headers, rows = _table(report, analysis)
    lines = [f"% {_tex(p)}" for p in _preamble(report) + count_notes(report)]
    lines += [r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\hline"]
    lines += [" & ".join(_tex(h) for h in headers) + r" \\", r"\hline"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in rows]
    return "\n".join(lines + [r"\hline", r"\end{tabular}"])


def _num(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _csv(report: Report, analysis: Analysis) -> str:
    """Numbers as logged (fractions stay fractions), one row per arm; empty cells where undefined."""
    columns = ["arm", "is_baseline", *COUNTS, "running", "interrupted", "params", "macs", "wall_time_s"]
    for key in report.keys:
        columns += [f"{key}_{part}" for part in ("mean", "std", "n", "delta", "n_pairs", "ci95_low", "ci95_high",
                                                 "same_seeds", "pairs_equal")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for arm in report.arms:
        counts = _arm_counts(arm)
        row: list[Any] = [arm.name, int(arm.is_baseline), *(counts[c] for c in columns[2:9])]
        row += [arm.params, arm.macs, _num(arm.wall_time_s)]
        for key in report.keys:
            m = arm.metrics[key]
            low, high = m.ci95 if m.ci95 else (None, None)
            paired = m.delta is not None
            row += [_num(m.mean), _num(m.std), m.n, _num(m.delta), m.n_paired if paired else None, _num(low),
                    _num(high), int(m.same_seeds) if paired else None, int(m.pairs_equal) if paired else None]
        # 10 significant digits: the logged precision, without binary noise like 0.0010999999999999899
        writer.writerow(["" if v is None else f"{v:.10g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue().rstrip("\n")


def _json(report: Report, analysis: Analysis) -> str:
    """The schema other tools read; NaN (an undefined mean or std) becomes null."""
    arms = []
    for arm in report.arms:
        metrics = {key: {"mean": _num(m.mean), "std": _num(m.std), "n": m.n, "delta": _num(m.delta),
                         "n_pairs": m.n_paired if m.delta is not None else None,
                         "ci95": [float(v) for v in m.ci95] if m.ci95 else None,
                         "same_seeds": m.same_seeds if m.delta is not None else None,
                         "pairs_equal": m.pairs_equal if m.delta is not None else None,
                         "examples": report.examples.get(key),
                         **_paired_json(report, analysis, key, arm.name)}
                   for key, m in arm.metrics.items()}
        arms.append({"arm": arm.name, **_arm_counts(arm), "params": arm.params, "macs": arm.macs,
                     "wall_time_s": _num(arm.wall_time_s), "metrics": metrics})
    return json.dumps({"ablation": report.ablation.name, "baseline": report.baseline, "metric": report.metric,
                       "ci": report.ci, "interrupted": [{"id": t.id, "arm": t.arm, "seed": t.seed, "why": t.interrupted}
                                                        for t in _interrupted(report)],
                       "per_example_ci": LABEL, "arms_compared": analysis.arms_compared,
                       "seeds_advice": {"confidence": CONFIDENCE, "power": POWER,
                                        "min_effect": analysis.min_effect}, "arms": arms}, indent=2)


# -- per-example intervals, seeds advice and Holm's adjustment (lightning_depth.ablation.paired) -------------------


def _holm_column(report: Report, analysis: Analysis, key: str) -> bool:
    """The compared metric gets a Holm column when several arms share one baseline."""
    return analysis.arms_compared > 1 and key == report.metric


def _paired_headers(report: Report, analysis: Analysis, key: str) -> list[str]:
    headers = []
    if key in analysis.per_example_keys:
        headers.append(f"Δ {_name(key)} per-example [95% CI]")
    if _holm_column(report, analysis, key):
        headers.append(f"p Holm ({'per-example' if key in analysis.per_example_keys else 'paired t'})")
    return headers


def _paired_cells(report: Report, analysis: Analysis, key: str, arm: str) -> list[str]:
    comparison = analysis.get(arm, key)
    per = comparison.per_example if comparison else None
    cells = []
    if key in analysis.per_example_keys:
        cells.append(_interval(report, key, per.delta, per.ci95) if per else "—")
    if _holm_column(report, analysis, key):
        cells.append(_p(per.p_holm if per else None) if key in analysis.per_example_keys else
                     _p(comparison.p_holm if comparison else None))
    return cells


def _interval(report: Report, key: str, delta: float, ci: tuple[float, float]) -> str:
    low, high = (_fmt(report, key, v, sign=True) for v in ci)
    return f"{_fmt(report, key, delta, sign=True)} [{low}, {high}]"


def _p(p: float | None) -> str:
    return "—" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def paired_notes(report: Report, analysis: Analysis) -> list[str]:
    """The lines under the table, for the compared metric: the per-example comparison with its flips, how many seeds
    would resolve the difference, and a word on comparing several arms with one baseline."""
    key, lines = report.metric, []
    found = [(arm, analysis.get(arm.name, key)) for arm in report.arms if not arm.is_baseline]
    found = [(arm, c) for arm, c in found if c is not None]
    per = [(arm, c.per_example) for arm, c in found if c.per_example is not None]
    if per:
        lines.append(f"Per-example Δ {_name(key)} ({LABEL}; the arms paired by seed and by example; flips over all "
                     "seed × example pairs):")
        for arm, p in per:
            lost, gained = p.flips
            lines.append(f"- {arm.name}: {_interval(report, key, p.delta, p.ci95)} over {_seeds(p.n_seeds)} × "
                         f"{p.n_examples:,} examples; flips: {lost:,} right → wrong, {gained:,} wrong → right")
    if found:
        lines += [""] if lines else []
        named = analysis.min_effect is not None and key in report.percent
        target = f"a Δ of {analysis.min_effect:g} points (--min-effect)" if named else "the observed Δ"
        lines.append(f"Seeds to resolve {target} in {_name(key)} at {CONFIDENCE:.0%} confidence with {POWER:.0%} "
                     "power:")
        for arm, c in found:
            advice = [f"{c.seeds_needed} with the seed-paired t interval" if c.seeds_needed
                      else f"seed-paired t: {c.why}"]
            if c.per_example is not None:
                p = c.per_example
                advice.append(f"{p.seeds_needed} with the per-example interval" if p.seeds_needed
                              else f"per-example: {p.why}")
                if not (c.seeds_needed or p.seeds_needed) and c.why == p.why:
                    advice = [c.why or ""]  # one reason for both
            delta = arm.metrics[key].delta if key in arm.metrics else None
            shown = f" (Δ {_fmt(report, key, delta, sign=True)})" if delta is not None else ""
            lines.append(f"- {arm.name}{shown}: " + "; ".join(advice))
    if analysis.arms_compared > 1:
        lines += [""] if lines else []
        lines.append(f"{analysis.arms_compared} arms are compared with one baseline: each 95% interval holds on its "
                     "own, so with many arms one may exclude 0 by chance; the p Holm column adjusts the p-values for "
                     f"all {analysis.arms_compared} comparisons together (below 0.05 there, the difference holds up "
                     "among them).")
    return lines


def _paired_json(report: Report, analysis: Analysis, key: str, arm: str) -> dict[str, Any]:
    c = analysis.get(arm, key)
    out: dict[str, Any] = {"p": _num(c.p) if c and c.p is not None else None,
                           "p_holm": _num(c.p_holm) if c and c.p_holm is not None else None,
                           "seeds_needed": c.seeds_needed if c else None}
    if key in report.percent:
        p = c.per_example if c else None
        out["per_example"] = None if p is None else {
            "delta": _num(p.delta), "ci95": [float(v) for v in p.ci95], "p": _num(p.p),
            "p_holm": _num(p.p_holm) if p.p_holm is not None else None, "n_examples": p.n_examples,
            "n_seeds": p.n_seeds, "flips": list(p.flips), "seeds_needed": p.seeds_needed}
    return out


def table_cells(report: Report, analysis: Analysis | None = None) -> tuple[list[str], list[list[str]]]:
    """The table's headers and text cells, as Markdown and LaTeX show them (for other renderers: HTML, W&B)."""
    return _table(report, analysis if analysis is not None else analyse(report))


def preamble(report: Report) -> list[str]:
    """The lines above the table: title, what the cells mean, how many trials are done."""
    return _preamble(report)
