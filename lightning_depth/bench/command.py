"""``lightning_depth bench``: options, the runner that gives each section its share of the budget, the report."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import sys
import tempfile
import time
import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import lightning_depth.bench
from lightning_depth import fmt
from lightning_depth.bench.timing import Config, Row
from lightning_depth.errors import UsageError

SECTIONS = ("pipeline", "models", "data", "fastpaths", "memory", "compare", "sweep")
# Share of --budget (start-up, warm-up and rounds) each section may spend; what a section leaves, or overruns by,
# goes to or comes from the sections after it. A section always completes one round.
SHARES = {"pipeline": 0.13, "models": 0.09, "data": 0.06, "fastpaths": 0.165, "memory": 0.12, "compare": 0.04,
          "sweep": 0.395}  # the sweep's round is two whole sweeps: minutes
HEADER = ("section", "comparison", "A", "B", "ratio", "range", "n", "goal", "met")


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": cores, "load_avg_1min": load, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def _value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.3g} {unit}"


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    """A row of the table; the data section's ratios are shares, printed as percentages."""
    share = r["section"] == "data"
    ratio = "-" if r["ratio"] is None else (f"{r['ratio']:.1%}" if share else f"{r['ratio']:.3f}")
    span = "-" if r["low"] is None else (f"{r['low']:.1%}-{r['high']:.1%}" if share
                                          else f"{r['low']:.3f}-{r['high']:.3f}")
    goal = "-" if r["goal"] is None else (f"<= {r['goal']:.0%}" if share else f"<= {r['goal']:.2f}")
    met = {None: "-", True: "yes", False: "NO"}[r["met"]] + ("?" if r["settled"] is False else "")
    return (r["section"], r["name"], _value(r["a"], r["unit"]), _value(r["b"], r["unit"]), ratio, span,
            str(r["n"]), goal, met)


def format_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# {m['cpu']}, {m['cores']} cores (load {m['load_avg_1min']:.1f} at start), torch {m['torch']}, "
             f"{m['torch_threads']} intra-op thread(s); {report['elapsed_s']:.0f} s",
             "# ratio: median over n rounds of A/B measured back to back (speed-ups: B/A); range: min-max; "
             "met: median within the goal, '?' where the range straddles it"]
    lines += fmt.table(HEADER, [_cells(r) for r in report["rows"]], rule=False)
    notes = [f"{r['section']}/{r['name']}: {r['note']}" for r in report["rows"] if r["note"]]
    return "\n".join(lines + (["", "notes:"] + [f"  {n}" for n in notes] if notes else []))


def run(cfg: Config, sections: tuple[str, ...]) -> dict[str, Any]:
    """Measure ``sections`` in order, each within its share of what is left of the budget; the report."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    info = machine()
    start = time.monotonic()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lightning_depth_bench_") as tmp:
        for i, name in enumerate(sections):
            left = cfg.budget_s - (time.monotonic() - start)
            budget = max(left * SHARES[name] / sum(SHARES[s] for s in sections[i:]), 1.0)
            deadline = time.monotonic() + budget
            print(f"bench: {name} ({fmt.duration(budget)}) at {fmt.duration(time.monotonic() - start)}",
                  file=sys.stderr, flush=True)
            # Imported when measured: the pipeline's Lightning and the models' torchvision take seconds to load.
            section = importlib.import_module(f"{__package__}.{name}")
            rows += section.measure(cfg, deadline, Path(tmp))
    return {"machine": info, "settings": asdict(cfg), "sections": list(sections),
            "elapsed_s": time.monotonic() - start,
            "rows": [{**asdict(r), "met": r.met, "settled": r.settled} for r in rows]}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"bench: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lightning_depth bench", description=lightning_depth.bench.__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quick", action="store_true", help="tiny sizes and budget, for tests (under a minute)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds the whole bench may take, start-up included (default 400; quick 40)")
    p.add_argument("--rounds", type=int, default=None, help="most paired rounds per comparison (default 5; quick 2)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (default 1: on a shared machine a spinning thread team is slower and "
                        "noisier; 0 keeps torch's default)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile in the fastpaths section")
    return p


def _config(args: argparse.Namespace) -> Config:
    for name in ("budget", "rounds"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"bench: --{name} {value} must be positive")
    if args.threads < 0:
        raise UsageError(f"bench: --threads {args.threads} must be 0 (torch's default) or more")
    overrides: dict[str, Any] = {"threads": args.threads}
    if args.budget is not None:
        overrides["budget_s"] = args.budget
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.no_compile:
        overrides["compile"] = False
    return Config.make(args.quick, **overrides)


def main(argv: list[str]) -> int:
    """``lightning_depth bench [--sections ...] [--format json] [--quick]``: measure and print the table."""
    args = _parser().parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise UsageError(f"bench: unknown section(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(SECTIONS)}")
    report = run(_config(args), tuple(dict.fromkeys(sections)))
    print(json.dumps(report, indent=2) if args.format == "json" else format_table(report))
    return 0
