"""``--dry-run``: the expanded matrix with each arm's size and a time estimate from a short timing probe."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from lightning_depth import fmt

PROBE_STEPS = 3


def probe_arm(parser: Any, cfg: Any) -> dict[str, Any]:
    """Parameters, multiply-adds and the measured seconds per training step of one arm's configuration."""
    from lightning_depth.models import logits_and_aux
    from lightning_depth.models.complexity import profile_model

    init = parser.instantiate_classes(cfg)
    model, data = init.model, init.data
    data.setup("fit")
    loader = data.train_dataloader()
    x, y = next(iter(loader))
    size = x.shape[-1]
    stats = profile_model(model.net, size, in_channels=x.shape[1])
    optimizer = model.optimizer_factory(model._param_groups())
    model.train()
    seconds = []
    for step in range(PROBE_STEPS + 1):
        start = time.perf_counter()
        logits = logits_and_aux(model.net(x)).logits
        loss = torch.nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step pays one-off allocation costs
            seconds.append(time.perf_counter() - start)
    step_s = sorted(seconds)[len(seconds) // 2]
    steps = _planned_steps(cfg, len(loader))
    val_batches = len(data.val_dataloader()) * _epochs(cfg, steps, len(loader))
    return {"params": stats.params, "macs": stats.macs, "step_s": step_s,
            "estimate_s": steps * step_s + val_batches * step_s / 3}


def _epochs(cfg: Any, steps: int, per_epoch: int) -> int:
    return max(1, math.ceil(steps / max(per_epoch, 1)))


def _planned_steps(cfg: Any, per_epoch: int) -> int:
    trainer = cfg.trainer
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        per_epoch = min(per_epoch, limit)
    elif isinstance(limit, float) and 0 < limit <= 1:
        per_epoch = max(1, int(per_epoch * limit))
    max_steps = trainer.get("max_steps") or -1
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None:
        max_epochs = 1000 if max_steps < 0 else math.ceil(max_steps / max(per_epoch, 1))
    by_epochs = max_epochs * per_epoch
    return by_epochs if max_steps < 0 else min(by_epochs, max_steps)


def print_dry_run(parser: Any, planned: list[Any]) -> None:
    """One row per trial: id, arm, seed, overrides, params, multiply-adds, estimated time."""
    probes: dict[str, dict[str, Any]] = {}
    for trial in planned:
        if trial.arm.name not in probes:
            probes[trial.arm.name] = probe_arm(parser, trial.config)
    header = ["trial", "arm", "seed", "overrides", "params", "multiply-adds", "est. time"]
    rows = []
    for trial in planned:
        p = probes[trial.arm.name]
        overrides = ", ".join(f"{k}={v}" for k, v in trial.arm.overrides.items())
        rows.append([trial.id, trial.arm.name + (" (baseline)" if trial.arm.is_baseline else ""), str(trial.seed),
                     overrides, fmt.count(p["params"]), fmt.count(p["macs"]), fmt.duration(p["estimate_s"])])
    print("\n".join(fmt.table(header, rows)))
    total = sum(probes[t.arm.name]["estimate_s"] for t in planned)
    print(f"\n{len(planned)} trials, {len(probes)} arms; estimated {fmt.duration(total)} run one at a time "
          f"(probe: median of {PROBE_STEPS} training steps per arm on this machine). Nothing was trained.")
