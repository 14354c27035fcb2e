"""How numbers, durations and tables look wherever lightning_depth prints them (summary, compare, status,
--dry-run, bench): one home, so one parameter count reads the same everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence


def count(n: float | None) -> str:
    """A parameter or multiply-add count in the papers' units: ``0.27M`` (ResNet-20), ``3.80G`` (ResNet-50)."""
    if n is None or not math.isfinite(n):
        return "-"
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f}G"
    if abs(n) >= 1e5:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.2f}K" if abs(n) >= 1e3 else f"{n:.0f}"


def duration(seconds: float | None) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``: seconds up to 90 s, minutes up to 90 min."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = (),
          rule: bool = True) -> list[str]:
    """Plain aligned text (no colour codes, so it reads the same in a log file); ``right`` right-aligns columns."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header)]
    if rule:
        out.append("  ".join("-" * w for w in widths))
    return out + [line(row) for row in rows]
