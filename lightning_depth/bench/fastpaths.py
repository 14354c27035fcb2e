"""fastpaths: channels_last, bf16 autocast (what ``--trainer.precision bf16-mixed`` does on a CPU) and
``torch.compile`` against fp32 on ResNet-20 steps; compile runs in a fresh process, so its compile time is what a
run pays, cut off at the section's time."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from lightning_depth.bench.probes import run_probe
from lightning_depth.bench.timing import Config, Row, interleave, paired, resnet20, timed, train_step


def measure(cfg: Config, deadline: float, tmp: Path) -> list[Row]:
    step = f"ResNet-20 b{cfg.batch} step"
    rows = [_compile_row(cfg, deadline, step)]  # first: a cold compile needs most of the section's time
    base = resnet20()
    x, y = torch.randn(cfg.batch, 3, 32, 32), torch.randint(0, 10, (cfg.batch,))
    models = {"fp32": base, "channels_last": copy.deepcopy(base).to(memory_format=torch.channels_last),
              "bf16": copy.deepcopy(base)}
    inputs = {"fp32": x, "channels_last": x.contiguous(memory_format=torch.channels_last), "bf16": x}
    arms = {}
    for name, net in models.items():
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        arms[name] = (lambda n=net, o=optimizer, xx=inputs[name], a=name == "bf16":
                      timed(lambda: train_step(n, o, xx, y, autocast=a)))
    for name in ("fp32", "channels_last"):
        arms[name]()  # warm-up
    t = interleave({k: arms[k] for k in ("fp32", "channels_last")}, deadline, cfg.rounds)
    rows.insert(0, paired("fastpaths", f"channels_last speed-up over fp32, {step}", t["channels_last"], t["fp32"],
                          invert=True))
    # Emulated bf16 is an order of magnitude slower here, so it gets the time that is left (at least one pair).
    arms["bf16"]()  # warm-up
    t = interleave({k: arms[k] for k in ("fp32", "bf16")}, deadline, cfg.rounds)
    rows.insert(1, paired("fastpaths", f"bf16 autocast speed-up over fp32, {step}", t["bf16"], t["fp32"],
                          invert=True,
                          note="" if _has_native_bf16() else "this CPU has no native bf16 (AVX512-BF16/AMX): emulated"))
    return rows


def _compile_row(cfg: Config, deadline: float, step: str) -> Row:
    name = f"torch.compile speed-up over fp32, {step}"
    if not cfg.compile:
        return Row("fastpaths", name, None, None, "s", None, note="skipped (--quick or --no-compile)")
    # Half of the section, the other arms need the rest; a warm inductor cache needs a fraction of that.
    limit = max((deadline - time.monotonic()) * 0.5, 30.0)
    result = run_probe("compile_probe", {"threads": cfg.threads, "batch": cfg.batch, "rounds": cfg.rounds,
                                         "budget_s": limit * 0.3}, timeout=limit)
    if isinstance(result, str):
        return Row("fastpaths", name, None, None, "s", None,
                   note=f"compile {result}; a cold inductor cache compiles for minutes on a slow CPU: rerun "
                        "(kernels are cached) or raise --budget")
    row = paired("fastpaths", name, result["compile"], result["fp32"], invert=True)
    row.note = f"compile time {result['first_step_s'] - row.a:.1f} s (first step less a compiled step)"
    return row


def _has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
