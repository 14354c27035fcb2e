"""What runs in a fresh Python process: the first compiled step (compile time is what a run pays) and the peak
memory of one DenseNet step (a fresh process has no earlier peak). Torch only, so a probe starts in a second."""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lightning_depth.bench.timing import interleave, resnet20, timed, train_step
from lightning_depth.models import build_model


def run_probe(function: str, args: dict[str, Any], timeout: float) -> dict[str, Any] | str:
    """Run ``function(args)`` of this module in a fresh Python; its JSON result, or why there is none."""
    code = (f"import json, sys; from {__name__} import {function}; "
            f"print(json.dumps({function}(json.loads(sys.argv[1]))))")
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                              timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        return f"did not finish within {timeout:.0f} s"
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"failed ({tail[0][:160]})"
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_probe(args: dict[str, Any]) -> dict[str, Any]:
    """The first compiled ResNet-20 step (compilation included), then fp32/compiled rounds."""
    torch.set_num_threads(args["threads"])
    eager = resnet20()
    compiled_net = copy.deepcopy(eager)
    compiled = torch.compile(compiled_net)
    x, y = torch.randn(args["batch"], 3, 32, 32), torch.randint(0, 10, (args["batch"],))
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    opt_c = torch.optim.SGD(compiled_net.parameters(), lr=0.1, momentum=0.9)
    train_step(eager, opt_e, x, y)
    first = timed(lambda: train_step(compiled, opt_c, x, y))
    arms = {"fp32": lambda: timed(lambda: train_step(eager, opt_e, x, y)),
            "compile": lambda: timed(lambda: train_step(compiled, opt_c, x, y))}
    t = interleave(arms, time.monotonic() + args["budget_s"], args["rounds"])
    return {"first_step_s": first, **t}


def _rss_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_probe(args: dict[str, Any]) -> dict[str, Any]:
    """How far DenseNet's first forward+backward raises the resident set above where it stood before, then the
    time of further steps."""
    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    net = build_model(args["model"], memory_efficient=args["memory_efficient"])
    x = torch.randn(args["batch"], 3, args["size"], args["size"])
    y = torch.randint(0, 1000, (args["batch"],))

    def step() -> None:
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    gc.collect()
    # Importing torch peaks higher than a small step does; Linux resets the high-water mark (VmHWM) on request.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before, peak_field = _rss_kib("VmRSS"), "VmHWM"
    except OSError:
        before, peak_field = None, None
    if before is None:  # elsewhere: the rise of ru_maxrss, blind to anything below an earlier peak
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    peak = _rss_kib(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = [timed(step) for _ in range(args["steps"])]
    return {"peak_mib": (peak - before) / 1024, "step_s": statistics.median(times)}
