"""memory: DenseNet-121 with and without ``memory_efficient``, each in a fresh process: the rise of the peak
resident set over one forward and backward, and the time of the next step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_depth.bench.probes import run_probe
from lightning_depth.bench.timing import Config, Row, interleave, paired


def measure(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    args = {"threads": cfg.threads, "model": "densenet121", "batch": cfg.memory_batch, "size": cfg.memory_size,
            "steps": 1}
    results: dict[str, list[dict[str, Any]]] = {"efficient": [], "normal": []}
    failures = []

    def arm(name: str) -> Callable[[], float]:
        def run() -> float:
            out = run_probe("memory_probe", {**args, "memory_efficient": name == "efficient"},
                            timeout=max(deadline - time.monotonic(), 60.0))
            if isinstance(out, str):
                failures.append(out)
                return math.nan
            results[name].append(out)
            return out["step_s"]
        return run

    interleave({"normal": arm("normal"), "efficient": arm("efficient")}, deadline, cfg.memory_rounds)
    title = f"DenseNet-121 memory_efficient / normal, b{cfg.memory_batch} {cfg.memory_size}px"
    if failures or not results["efficient"] or not results["normal"]:
        return [Row("memory", title, None, None, "", None, note=f"probe {failures[0] if failures else 'missing'}")]
    eff, normal = results["efficient"], results["normal"]
    return [
        paired("memory", f"{title}: peak RSS rise of fwd+bwd", [r["peak_mib"] for r in eff],
               [r["peak_mib"] for r in normal], unit="MiB", note="each arm in a fresh process"),
        paired("memory", f"{title}: fwd+bwd time", [r["step_s"] for r in eff], [r["step_s"] for r in normal]),
    ]
