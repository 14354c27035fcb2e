"""The ablation driver: experiment file → spec → trials (resolved configs on disk) → launcher → report.

``fit --config FILE`` with an ``ablation:`` section lands here with the fully parsed base configuration (every
command-line override already applied). Each trial's configuration is the base plus the arm's dotted overrides
plus its seed, validated by the same parser that will train it and written to ``<root>/<name>/<id>/config.yaml``
before anything trains. Launchers return; only this driver prints the report.

Bad input is refused before anything is written (:mod:`checks`). Trials that another process or a SLURM job holds
are reported and left alone (:mod:`liveness`), and a submission the queue cannot vouch for writes nothing.
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

from lightning_depth.ablation import launch_local, ledger, liveness, slurm, slurm_queue
from lightning_depth.ablation.checks import absolute_paths, check_data, check_distinct, check_metric, check_parallel
from lightning_depth.ablation.paired import analyse
from lightning_depth.ablation.plots import write_plots
from lightning_depth.ablation.probe import print_dry_run
from lightning_depth.ablation.render import render
from lightning_depth.ablation.report import build_report
from lightning_depth.ablation.slurm import SlurmOptions
from lightning_depth.ablation.slurm_queue import QueueUnavailable
from lightning_depth.ablation.spec import AblationSpec, Arm, parse_spec, short_keys, trial_id, trials
from lightning_depth.ablation.wandb_report import publish, trials_log_to_wandb
from lightning_depth.atomic import write_atomic
from lightning_depth.configs import IMPORT_ALLOWLIST_KEY, one_line
from lightning_depth.errors import UsageError
from lightning_depth.metrics import RESULT_FILE
from lightning_depth.runs import DRIVER_KEYS, check_writable, resolved_config

# Keys left out of the content hash: where a trial writes is derived from its id, not part of it, and the imports a
# config allows change what may be named, not what is trained.
RUN_SPECIFIC = ("trainer.default_root_dir", IMPORT_ALLOWLIST_KEY)


@dataclass
class PlannedTrial:
    id: str
    arm: Arm
    seed: int
    dir: Path
    config: Any  # the trial's jsonargparse Namespace


@dataclass
class Selection:
    """What a launch does with each planned trial."""

    todo: list[PlannedTrial]
    finished: list[PlannedTrial]
    failed: list[PlannedTrial]  # failed before, left alone without --retry-failed
    busy: dict[str, str]  # trial id -> who holds it: a live process or a SLURM job
    unreadable: dict[str, str]  # trial id -> why its state.json cannot be read


def run_ablation(parser: Any, cfg: Any) -> int:
    """Plan, launch and report an ablation; returns 0 when every trial is done (or the sweep was submitted)."""
    spec = parse_spec(cfg.ablation)
    parallel = check_parallel(cfg.get("parallel"))
    check_metric(spec.metric)
    ablation_dir = Path(cfg.trainer.get("default_root_dir") or "runs").expanduser().absolute() / spec.name
    check_writable(ablation_dir)
    planned = plan(parser, cfg, spec, ablation_dir)
    if cfg.get("dry_run"):
        print_dry_run(parser, planned, parallel=int(cfg.get("parallel") or 1),
                      fork_server=cfg.get("launcher") != "slurm" and cfg.get("fork_server") is not False)
        return 0
    check_data([(t.arm.name, t.config) for t in planned])
    ignore_queue = bool(cfg.get("ignore_queue"))
    chosen = select(ablation_dir, planned, retry_failed=bool(cfg.get("retry_failed")), ignore_queue=ignore_queue)
    _print_selection(spec, ablation_dir, planned, chosen)
    slurm_launch = cfg.get("launcher") == "slurm"
    if slurm_launch and chosen.todo:
        options = SlurmOptions.from_mapping({**spec.slurm, **(cfg.get("slurm") or {})})
        trainer = resolved_config(parser, cfg).get("trainer") or {}
        # Checked first, written after: a refused submission leaves the ablation's files as they were.
        submission = slurm.prepare(ablation_dir, [t.dir for t in chosen.todo], options, trainer, ignore_queue,
                                   {t.dir: resolved_config(parser, t.config).get("trainer") or {} for t in chosen.todo})
        write_trials(parser, spec, ablation_dir, planned)
        submitted(ablation_dir, slurm.send(submission), len(chosen.todo))
        return 2 if chosen.unreadable else 0
    write_trials(parser, spec, ablation_dir, planned)
    if slurm_launch:
        print("every trial is done; nothing to submit" if len(chosen.finished) == len(planned) else
              "nothing to submit", file=sys.stderr)
        ok = True
    else:
        ok = launch_local.launch([t.dir for t in chosen.todo], parallel=parallel, metric=spec.metric,
                                 fork_server=cfg.get("fork_server") is not False)
    print_report(ablation_dir, spec.metric)
    if chosen.unreadable:
        return 2
    return 0 if ok and all(_finished(t.dir) for t in planned) else 1


def _finished(trial_dir: Path) -> bool:
    try:
        state = ledger.read_state(trial_dir)
    except ValueError:
        return False
    return state is not None and state.state == "done"


def _print_selection(spec: AblationSpec, ablation_dir: Path, planned: list[PlannedTrial], chosen: Selection) -> None:
    """One line for the whole ablation, then one per trial that is not started and why."""
    parts = [f"{len(chosen.finished)} done", f"{len(chosen.todo)} to run"]
    if chosen.failed:
        parts.append(f"{len(chosen.failed)} failed before: pass --retry-failed to rerun them")
    if chosen.busy:
        parts.append(f"{len(chosen.busy)} running elsewhere")
    if chosen.unreadable:
        parts.append(f"{len(chosen.unreadable)} with an unreadable state")
    print(f"ablation {spec.name}: {len(planned)} trials in {ablation_dir} ({', '.join(parts)})", file=sys.stderr)
    for tid, owner in chosen.busy.items():
        print(f"  not started: {tid} ({owner})", file=sys.stderr)
    for problem in chosen.unreadable.values():
        print(f"error: {problem}; fix or delete the file to run this trial again", file=sys.stderr)


def submitted(ablation_dir: Path, job: str, count: int) -> None:
    """Say which job runs the trials and how to follow it."""
    where = shlex.quote(str(ablation_dir))
    print(f"submitted array job {job}: {count} trial(s)\n"
          f"  follow:  squeue -j {job}   or   python -m lightning_depth status {where}\n"
          f"  logs:    {shlex.quote(str(ablation_dir / 'slurm' / 'logs'))}/{job}_<task>.out\n"
          f"  results: python -m lightning_depth compare {where}   (works while trials finish)")


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
    for arm, _ in trials(spec):
        if arm.name not in validated:
            validated[arm.name] = _arm_config(parser, base, arm)
            absolute_paths(validated[arm.name])
    check_distinct([(arm.name, arm.overrides, _content(parser, validated[arm.name]))
                    for arm in dict((a.name, a) for a, _ in trials(spec)).values()])
    out = []
    for arm, seed in trials(spec):
        trial_cfg = validated[arm.name].clone()
        trial_cfg.seed_everything = seed
        tid = trial_id(arm, seed, _content(parser, trial_cfg))
        trial_cfg.trainer.default_root_dir = str(ablation_dir / tid)
        _label_wandb(trial_cfg, spec, arm, seed)
        out.append(PlannedTrial(tid, arm, seed, ablation_dir / tid, trial_cfg))
    return out


def _content(parser: Any, cfg: Any) -> dict[str, Any]:
    """What a trial trains: its resolved configuration without the keys that only say where it writes."""
    content = resolved_config(parser, cfg)
    for key in RUN_SPECIFIC:
        _drop(content, key)
    return content


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


def select(ablation_dir: Path, planned: list[PlannedTrial], retry_failed: bool,
           ignore_queue: bool = False) -> Selection:
    """Sort the planned trials: finished, to launch, failed before, held by a live process or a SLURM job (a
    trial the ledger calls running but whose process or job is gone is launched again: it resumes), unreadable."""
    chosen = Selection([], [], [], {}, {})
    states: dict[str, ledger.TrialState | None] = {}
    for trial in planned:
        try:
            states[trial.id] = ledger.read_state(trial.dir)
        except ValueError as err:
            chosen.unreadable[trial.id] = str(err)
    owners = _owners(ablation_dir, {t.dir: s for t in planned if (s := states.get(t.id)) is not None}, ignore_queue)
    for trial in planned:
        if trial.id in chosen.unreadable:
            continue
        state = states[trial.id]
        status = state.state if state else "pending"
        if status in ("done", "diverged") and (trial.dir / RESULT_FILE).is_file():
            chosen.finished.append(trial)
        elif trial.dir in owners:
            chosen.busy[trial.id] = owners[trial.dir]
        elif status == "failed" and not retry_failed:
            chosen.failed.append(trial)
        else:
            chosen.todo.append(trial)
    return chosen


def _owners(ablation_dir: Path, states: dict[Path, ledger.TrialState], ignore_queue: bool) -> dict[Path, str]:
    """Trial directory -> who holds it: an active task of a job submitted for this ablation (the queue must answer,
    or ``ignore_queue`` say to go ahead), or the live process or job of a trial that is running."""
    running = {d: s for d, s in states.items() if s.state == "running"}
    jobs = slurm_queue.submitted_jobs(ablation_dir)
    asked = list(dict.fromkeys([*jobs, *(str(s.slurm_job) for s in running.values() if s.slurm_job)]))
    queue: dict[str, str] | None = None
    if asked:
        try:
            queue = slurm_queue.ask_queue(asked)
        except QueueUnavailable as err:
            if jobs and not ignore_queue:
                raise UsageError(f"cannot tell which trials job {', '.join(jobs)} of this ablation still holds: "
                                 f"{err}; nothing was launched. Check with squeue -j {','.join(jobs)}, then pass "
                                 "--ignore-queue to go ahead anyway") from None
            if jobs:
                print(f"--ignore-queue: going ahead although SLURM could not be asked about job "
                      f"{', '.join(jobs)} ({err})", file=sys.stderr)
    owners = slurm_queue.owned_trials(ablation_dir, queue) if queue is not None and jobs else {}
    for trial_dir, state in running.items():
        found = liveness.owner(state, queue)
        if found.alive:
            owners.setdefault(trial_dir, found.what)
    return owners


def print_report(ablation_dir: Path, metric: str) -> None:
    """The comparison table on stdout; plots beside the results; and when the trials log to W&B, the comparison as
    a W&B run in their group. A plot or a W&B run that fails is reported, never fatal."""
    report = build_report(ablation_dir, metric)
    analysis = analyse(report)
    plots = write_plots(report, ablation_dir)
    print(render(report, "markdown", analysis))
    options = trials_log_to_wandb(report.ablation)
    if options is not None:
        publish(report, analysis, plots, options)
