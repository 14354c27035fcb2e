"""``--dry-run``: the expanded matrix with each arm's size and a time estimate from a short timing probe.

The data is never required: where it is not there yet, each arm is sized and its step timed on random batches of the
data module's shape, and the table says that the total needs the data.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace

from lightning_depth import fmt
from lightning_depth.ablation import launch_local, ledger
from lightning_depth.configs import one_line
from lightning_depth.data.synthetic import RandomImages
from lightning_depth.errors import UsageError
from lightning_depth.models import logits_and_aux
from lightning_depth.models.complexity import profile_model

PROBE_STEPS = 3
STARTUP_RUNS = 2  # through a fork server: the first trial also waits for the server's imports
STARTUP_TIMEOUT_S = 600.0


def probe_arm(parser: Any, cfg: Any, slot_threads: int = 0) -> dict[str, Any]:
    """Parameters, multiply-adds and the measured seconds per training step of one arm's configuration (with
    ``slot_threads``: also at that many intra-op threads, a CPU slot's share); without the data, ``missing`` says
    why and the step is timed on random batches of the data's shape."""
    init, missing = None, None
    try:
        init = parser.instantiate_classes(cfg)
        init.data.setup("fit")
        loader = init.data.train_dataloader()
    except UsageError as err:  # the data module was built; its data is not there
        missing = str(err)
    except ValueError as err:  # a data module that reads its folders when built (ImageFolder) refused
        init, missing = None, one_line(str(err))
    if missing is not None and init is not None:  # the model was built: only the batches are stand-ins
        loader = RandomImages(**_data_shape(cfg, init.data)).train_dataloader()
    elif missing is not None:  # the model is built beside a stand-in data module, which gives it its classes
        stand_in = cfg.clone()
        stand_in.data = Namespace(class_path=f"{RandomImages.__module__}.{RandomImages.__qualname__}",
                                  init_args=Namespace(**_data_shape(cfg, None)))
        init = parser.instantiate_classes(stand_in)
        loader = init.data.train_dataloader()
    model, data = init.model, init.data
    x, y = next(iter(loader))
    stats = profile_model(model.net, x.shape[-1], in_channels=x.shape[1])
    optimizer = model.optimizer_factory(model._param_groups())
    model.train()
    step_s = _time_steps(model.net, optimizer, x, y)
    slot_step_s = step_s
    if slot_threads and slot_threads != torch.get_num_threads():
        threads = torch.get_num_threads()
        torch.set_num_threads(slot_threads)
        try:
            slot_step_s = _time_steps(model.net, optimizer, x, y)
        finally:
            torch.set_num_threads(threads)
    probe = {"params": stats.params, "macs": stats.macs, "step_s": step_s, "slot_step_s": slot_step_s,
             "batch": tuple(x.shape), "missing": missing, "estimate_s": None}
    if missing is None:
        steps = _planned_steps(cfg, len(loader))
        val_batches = len(data.val_dataloader()) * _epochs(cfg, steps, len(loader))
        # A validation batch: a forward, about a third of a training step.
        probe["estimate_s"] = (steps + val_batches / 3) * step_s
    return probe


def _time_steps(net: torch.nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    """The median of PROBE_STEPS timed training steps, after one untimed (it pays one-off allocations)."""
    seconds = []
    for step in range(PROBE_STEPS + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(logits_and_aux(net(x)).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def _data_shape(cfg: Any, data: Any) -> dict[str, int]:
    """Classes, image side, channels and batch size of the configured data: from the data module where it could be
    built, else from its arguments, with the network's own default number of classes."""
    if data is not None:
        return {"num_classes": data.num_classes, "image_size": getattr(data, "image_size", 224),
                "in_channels": getattr(data, "in_channels", 3), "batch_size": data.batch_size}
    args = cfg.data.get("init_args") or Namespace()
    module, _, name = cfg.model.net.class_path.rpartition(".")
    default = inspect.signature(getattr(importlib.import_module(module), name)).parameters.get("num_classes")
    classes = default.default if default is not None and isinstance(default.default, int) else 1000
    return {"num_classes": classes, "image_size": args.get("image_size") or 224, "in_channels": 3,
            "batch_size": args.get("batch_size") or 1}


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


def measure_startup(parser: Any, trial: Any, fork_server: bool = True) -> dict[str, Any]:
    """A trial's start-up on this machine, measured: its configuration run for zero training steps in a temporary
    directory, W&B offline, started as the local launcher starts it. ``per_trial_s``: the process's time besides its
    fit (starting, parsing, reading the data, W&B, exiting); ``once_s``: what the first trial of a sweep waits for
    besides (a fork server's own imports; it runs two trials to tell them apart); ``error``: why nothing was
    measured. Call it before anything in this process computes: the fork server is forked from it."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_DIR", None)  # the probe's W&B files stay in its temporary directory
    seconds: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lightning_depth_startup_") as tmp:
        starter = launch_local.runner(fork_server)
        try:
            for key in range(STARTUP_RUNS if fork_server else 1):
                trial_dir = Path(tmp) / f"trial{key}"
                trial_dir.mkdir()
                cfg = trial.config.clone()
                cfg.trainer.default_root_dir = str(trial_dir)
                cfg.trainer.max_steps = 0
                (trial_dir / "config.yaml").write_text(parser.dump(cfg, skip_check=True))
                start = time.perf_counter()
                starter.start(key, trial_dir, env)
                while (code := starter.poll(key)) is None:
                    if time.perf_counter() - start > STARTUP_TIMEOUT_S:
                        starter.kill(key)
                        return {"error": f"it did not end within {STARTUP_TIMEOUT_S:.0f} s"}
                    starter.wait(0.05)
                process_s = time.perf_counter() - start
                fit_s = (ledger.read_result(trial_dir) or {}).get("wall_time_s")
                if code != 0 or not isinstance(fit_s, (int, float)):
                    state = ledger.read_state(trial_dir)
                    return {"error": state.reason if state is not None and state.reason else f"exit code {code}"}
                seconds.append(process_s - fit_s)
        finally:
            starter.close()
    return {"per_trial_s": seconds[-1], "once_s": max(seconds[0] - seconds[-1], 0.0), "how": starter.how}


def sweep_seconds(trial_s: list[float], startup: dict[str, Any], slots: int) -> float:
    """The sweep's wall time with ``slots`` trials at once, each started in launch order as a slot frees, as the
    launcher starts them. ``trial_s`` are the trials' times as they run in a slot: on its own GPU, or at its share
    of the CPU's cores (a small network often uses N cores less than N times as well as one, so CPU slots gain)."""
    per, once = startup.get("per_trial_s", 0.0), startup.get("once_s", 0.0)
    ends = [0.0] * max(slots, 1)
    for seconds in trial_s:
        ends[ends.index(min(ends))] += seconds + per
    return once + max(ends)


def print_dry_run(parser: Any, planned: list[Any], parallel: int = 1, fork_server: bool = True) -> None:
    """One row per trial: id, arm, seed, overrides, params, multiply-adds, time per step, estimated time (start-up
    included); then the sweep's time one at a time and with ``parallel`` (or a natural number of) slots."""
    # First: the fork server is forked from this process, which must not have run a parallel op yet.
    startup = measure_startup(parser, planned[0], fork_server) if planned else {"error": "no trials"}
    slots, gpus = _slots(parallel, planned[0].config) if planned else (1, 0)
    slot_threads = launch_local.cpu_threads(slots) if slots > 1 and not gpus else 0
    probes: dict[str, dict[str, Any]] = {}
    for trial in planned:
        if trial.arm.name not in probes:
            probes[trial.arm.name] = probe_arm(parser, trial.config, slot_threads)
    header = ["trial", "arm", "seed", "overrides", "params", "multiply-adds", "step", "est. time"]
    rows = []
    for trial in planned:
        p = probes[trial.arm.name]
        overrides = ", ".join(f"{k}={v}" for k, v in trial.arm.overrides.items())
        estimate = (fmt.duration(p["estimate_s"] + startup.get("per_trial_s", 0.0)) if p["missing"] is None
                    else "needs data")
        rows.append([trial.id, trial.arm.name + (" (baseline)" if trial.arm.is_baseline else ""), str(trial.seed),
                     overrides, fmt.count(p["params"]), fmt.count(p["macs"]), _step(p["step_s"]), estimate])
    print("\n".join(fmt.table(header, rows)))
    missing = [p for p in probes.values() if p["missing"] is not None]
    if missing:
        batch = "x".join(map(str, missing[0]["batch"]))
        print(f"\nThe data is not there ({missing[0]['missing']}): each step was timed on random {batch} batches "
              "of its shape, and the total time needs the data's size. Fetch the data and run --dry-run again for it.")
    trial_s = [probes[t.arm.name]["estimate_s"] or 0.0 for t in planned]
    print(f"\n{_startup_line(startup)}")
    print(f"\n{len(planned)} trials, {len(probes)} arms"
          + (f"; estimated {fmt.duration(sweep_seconds(trial_s, startup, 1))} run one at a time"
             if not missing else "")
          + f" (probe: median of {PROBE_STEPS} training steps per arm on this machine). Nothing was trained.")
    if not missing and planned:
        # The same steps in a slot, at the step time measured with the slot's threads.
        slot_s = [p["estimate_s"] * p["slot_step_s"] / p["step_s"] for p in (probes[t.arm.name] for t in planned)]
        print(_parallel_line(slot_s, startup, slots, gpus, slot_threads, probes))


def _startup_line(startup: dict[str, Any]) -> str:
    if "error" in startup:
        return f"Start-up per trial not measured: a trial of the first arm could not start ({startup['error']})."
    once = f"; the first trial also waits {startup['once_s']:.1f} s for the server" if startup["once_s"] else ""
    return (f"Start-up per trial: {startup['per_trial_s']:.1f} s, measured (the first trial's configuration run for 0 "
            f"steps, as {startup['how']}{once}); included above.")


def _slots(parallel: int, cfg: Any) -> tuple[int, int]:
    """The slots the ``--parallel`` line estimates (the N given, else one per GPU, else two CPU slots) and the GPUs
    the trials would use."""
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    gpus = launch_local.gpu_count() if accelerator in ("gpu", "cuda", "auto") else 0
    return (parallel if parallel > 1 else max(gpus, 2)), gpus


def _parallel_line(slot_s: list[float], startup: dict[str, Any], slots: int, gpus: int, slot_threads: int,
                   probes: dict[str, dict[str, Any]]) -> str:
    """The sweep's time with ``--parallel slots``: GPU slots overlap whole trials (GPUs shared beyond one a slot);
    CPU slots each train at their share of the threads, at the step time measured with that many."""
    if gpus:
        where = f"one GPU each of {gpus}" if slots <= gpus else f"{gpus} GPUs shared"
        seconds = sweep_seconds(slot_s, startup, min(slots, gpus))
        return f"With --parallel {slots} ({where}): about {fmt.duration(seconds)}."
    steps = ", ".join(_step(p["slot_step_s"]) for p in probes.values())
    threads = slot_threads or torch.get_num_threads()
    return (f"With --parallel {slots} ({slots} CPU slots of {threads} thread{'s' if threads != 1 else ''} each "
            f"on {os.cpu_count() or 1} cores; a step at that share: {steps}): about "
            f"{fmt.duration(sweep_seconds(slot_s, startup, slots))}.")


def _step(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
