"""The ablation driver: experiment file → spec → trials (resolved configs on disk) → launcher → report.

``fit --config FILE`` with an ``ablation:`` section lands here with the fully parsed base configuration (every
command-line override already applied). Each trial's configuration is the base plus the arm's dotted overrides
plus its seed, validated by the same parser that will train it and written to ``<root>/<name>/<id>/config.yaml``
before anything trains. Launchers return; only this driver prints the report.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_depth.ablation import launch_local, ledger
from lightning_depth.ablation.plots import write_plots
from lightning_depth.ablation.probe import print_dry_run
from lightning_depth.ablation.render import render
from lightning_depth.ablation.report import build_report
from lightning_depth.ablation.slurm import SlurmOptions, submit
from lightning_depth.ablation.spec import AblationSpec, Arm, parse_spec, short_keys, trial_id, trials
from lightning_depth.atomic import write_atomic
from lightning_depth.errors import UsageError
from lightning_depth.metrics import RESULT_FILE
from lightning_depth.runs import DRIVER_KEYS, one_line, resolved_config

# Per-run keys left out of the content hash: where a trial writes is derived from its id, not part of it.
RUN_SPECIFIC = ("trainer.default_root_dir",)


@dataclass
class PlannedTrial:
    id: str
    arm: Arm
    seed: int
    dir: Path
    config: Any  # the trial's jsonargparse Namespace


def run_ablation(parser: Any, cfg: Any) -> int:
    """Plan, launch and report an ablation; returns 0 when every trial is done (or the sweep was submitted)."""
    spec = parse_spec(cfg.ablation)
    root = Path(cfg.trainer.get("default_root_dir") or "runs")
    ablation_dir = root / spec.name
    planned = plan(parser, cfg, spec, ablation_dir)
    if cfg.get("dry_run"):
        print_dry_run(parser, planned)
        return 0
    write_trials(parser, spec, ablation_dir, planned)
    todo, skipped_failed = select(planned, retry_failed=bool(cfg.get("retry_failed")))
    done = len(planned) - len(todo) - len(skipped_failed)
    print(f"ablation {spec.name}: {len(planned)} trials in {ablation_dir} ({done} done, {len(todo)} to run"
          + (f", {len(skipped_failed)} failed before: pass --retry-failed to rerun them" if skipped_failed else "")
          + ")", file=sys.stderr)
    if cfg.get("launcher") == "slurm" and todo:
        trainer = resolved_config(parser, cfg).get("trainer") or {}
        return submit_to_slurm(spec, ablation_dir, todo, SlurmOptions.from_mapping(
            {**spec.slurm, **(cfg.get("slurm") or {})}), trainer)
    if cfg.get("launcher") == "slurm":
        print("every trial is done; nothing to submit", file=sys.stderr)
        ok = True
    else:
        ok = launch_local.launch([t.dir for t in todo], parallel=int(cfg.get("parallel") or 1), metric=spec.metric)
    print_report(ablation_dir, spec.metric)
    states = [ledger.read_state(t.dir) for t in planned]
    return 0 if ok and all(s is not None and s.state == "done" for s in states) else 1


def submit_to_slurm(spec: AblationSpec, ablation_dir: Path, todo: list[PlannedTrial], options: SlurmOptions,
                    trainer: dict[str, Any]) -> int:
    """Submit the unfinished trials as one SLURM array job; say how to follow it, and return at once."""
    job = submit(ablation_dir, [t.dir for t in todo], options, trainer)
    where = shlex.quote(str(ablation_dir))
    print(f"submitted array job {job}: {len(todo)} trial(s)\n"
          f"  follow:  squeue -j {job}   or   python -m lightning_depth status {where}\n"
          f"  logs:    {shlex.quote(str(ablation_dir / 'slurm' / 'logs'))}/{job}_<task>.out\n"
          f"  results: python -m lightning_depth compare {where}   (works while trials finish)")
    return 0


def plan(parser: Any, cfg: Any, spec: AblationSpec, ablation_dir: Path) -> list[PlannedTrial]:
    """Every trial's resolved, validated configuration and id; fails before any trial starts."""
    base = cfg.clone()
    for key in DRIVER_KEYS:
        base.pop(key, None)
    for key in spec.factors:
        if key not in base:
            raise UsageError(f"ablation factor {key!r} is not a key of this configuration; factor keys are the "
                             "CLI's dotted keys, e.g. model.net.init_args.preact or model.optimizer.init_args.lr")
    validated: dict[str, Any] = {}
    out = []
    for arm, seed in trials(spec):
        if arm.name not in validated:
            validated[arm.name] = _arm_config(parser, base, arm)
        trial_cfg = validated[arm.name].clone()
        trial_cfg.seed_everything = seed
        content = resolved_config(parser, trial_cfg)
        for key in RUN_SPECIFIC:
            _drop(content, key)
        tid = trial_id(arm, seed, content)
        trial_cfg.trainer.default_root_dir = str(ablation_dir / tid)
        _label_wandb(trial_cfg, spec, arm, seed)
        out.append(PlannedTrial(tid, arm, seed, ablation_dir / tid, trial_cfg))
    return out


def _arm_config(parser: Any, base: Any, arm: Arm) -> Any:
    arm_cfg = base.clone()
    for key, value in arm.overrides.items():
        arm_cfg[key] = value
    text = parser.dump(arm_cfg, skip_check=True)
    try:
        parsed = parser.parse_string(text)
    except Exception as err:  # noqa: BLE001 - jsonargparse reports a bad override as ArgumentError (or a plain error)
        raise UsageError(f"arm {arm.name!r} is not a valid configuration: {one_line(str(err))}") from None
    _check_net(parsed, arm.name)
    return parsed


def _check_net(cfg: Any, arm_name: str) -> None:
    """Build the arm's network on the meta device: a toggle the paper does not allow fails now, not mid-sweep."""
    net = cfg.model.get("net")
    if not hasattr(net, "class_path"):
        return
    module, _, name = net.class_path.rpartition(".")
    kwargs = net.init_args.as_dict() if hasattr(net.init_args, "as_dict") else dict(net.init_args or {})
    if kwargs.get("num_classes") is None:
        kwargs["num_classes"] = 10  # linked from the data module at run time; any value checks the toggles
    try:
        with torch.device("meta"):
            getattr(importlib.import_module(module), name)(**kwargs)
    except (ValueError, TypeError) as err:
        raise UsageError(f"arm {arm_name!r}: {str(err).splitlines()[0]}") from None


def _drop(data: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.get(part) or {}
    data.pop(leaf, None)


def _label_wandb(trial_cfg: Any, spec: AblationSpec, arm: Arm, seed: int) -> None:
    """One W&B run per trial: group = ablation, name = arm and seed, each factor a config key and a tag."""
    loggers = trial_cfg.trainer.get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    shorts = short_keys(list(arm.overrides))
    factors = {shorts[k]: v for k, v in arm.overrides.items()}
    tags = [f"{k}={_render(v)}" for k, v in factors.items()]
    for logger in loggers:
        if getattr(logger, "class_path", "").endswith("lightning_depth.loggers.WandbLogger"):
            args = logger.init_args
            args.group = spec.name
            args.name = f"{arm.name}-s{seed}"
            args.job_type = "ablation"
            args.tags = [*tags, f"arm={arm.name}", f"seed={seed}"] + (["baseline"] if arm.is_baseline else [])
            args.config = {**factors, "arm": arm.name, "seed": seed, "ablation": spec.name}


def _render(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def write_trials(parser: Any, spec: AblationSpec, ablation_dir: Path, planned: list[PlannedTrial]) -> None:
    """Write every trial's config.yaml, trial.json and pending state before anything trains."""
    ablation_dir.mkdir(parents=True, exist_ok=True)
    for trial in planned:
        trial.dir.mkdir(parents=True, exist_ok=True)
        config = trial.dir / "config.yaml"
        text = parser.dump(trial.config, skip_check=True)
        if not config.exists() or config.read_text() != text:
            write_atomic(config, text)
        ledger.write_trial(trial.dir, trial.id, trial.arm, trial.seed)
    ledger.write_ablation(ablation_dir, spec, [t.id for t in planned])


def select(planned: list[PlannedTrial], retry_failed: bool) -> tuple[list[PlannedTrial], list[PlannedTrial]]:
    """Trials to launch (not done; failed ones only on request) and failed trials left alone."""
    todo, failed = [], []
    for trial in planned:
        state = ledger.read_state(trial.dir)
        status = state.state if state else "pending"
        if status == "done" and (trial.dir / RESULT_FILE).is_file():
            continue
        if status == "failed" and not retry_failed:
            failed.append(trial)
            continue
        todo.append(trial)
    return todo, failed


def print_report(ablation_dir: Path, metric: str) -> None:
    """The comparison table on stdout; plots beside the results (a plot that fails is reported, never fatal)."""
    report = build_report(ablation_dir, metric)
    write_plots(report, ablation_dir)
    print(render(report, "markdown"))
