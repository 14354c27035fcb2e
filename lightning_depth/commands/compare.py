"""``compare DIR``: every arm of an ablation as mean ± std over seeds, with its difference to the baseline paired by
seed and by example, and how many seeds would settle it (as text, an HTML page, or a W&B run)."""

from __future__ import annotations

import argparse
import sys

from lightning_depth.ablation.html import write_html
from lightning_depth.ablation.paired import analyse
from lightning_depth.ablation.plots import write_plots
from lightning_depth.ablation.render import FORMATS, render
from lightning_depth.ablation.report import build_report
from lightning_depth.ablation.wandb_report import publish
from lightning_depth.errors import UsageError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_depth compare", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="an ablation directory (with ablation.json) or a directory holding exactly one")
    parser.add_argument("--format", choices=(*FORMATS, "html"), default="markdown",
                        help="html writes one self-contained page (table, intervals, plots) into DIR")
    parser.add_argument("--metric", default=None, help="metric to compare (default: the ablation's, e.g. val/acc1)")
    parser.add_argument("--min-effect", type=float, default=None, metavar="POINTS",
                        help="size the seeds advice for this difference, in percentage points for accuracies "
                             "(default: the observed difference)")
    parser.add_argument("--wandb", action="store_true",
                        help="also write the comparison as a W&B run (job type ablation-report, the ablation's "
                             "group); running it again updates that run")
    parser.add_argument("--no-plots", action="store_true", help="do not write PNG plots into DIR")
    args = parser.parse_args(argv)
    if args.min_effect is not None and not args.min_effect > 0:
        raise UsageError(f"--min-effect {args.min_effect}: must be a positive difference")
    report = build_report(args.dir, args.metric)
    analysis = analyse(report, args.min_effect)
    if args.format != "html":
        print(render(report, args.format, analysis))
    plots = [] if args.no_plots else write_plots(report)
    for path in plots:
        print(f"wrote {path}", file=sys.stderr)
    if args.format == "html":
        print(write_html(report, analysis, plots))
    if args.wandb and not publish(report, analysis, plots):
        return 1
    return 0
