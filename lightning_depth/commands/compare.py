"""``compare DIR``: every arm of an ablation as mean ± std over seeds, with seed-paired deltas to the baseline."""

from __future__ import annotations

import argparse
import sys

from lightning_depth.ablation.plots import write_plots
from lightning_depth.ablation.render import FORMATS, render
from lightning_depth.ablation.report import build_report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_depth compare", description=__doc__.splitlines()[0])
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
