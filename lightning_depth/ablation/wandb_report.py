"""An ablation's comparison as one W&B run, so the W&B project shows the answer the terminal shows.

The run joins the trials' group (the ablation's name) with job type ``ablation-report``, and its id is derived from
the ablation directory, so writing the report again updates that run instead of adding one. It holds

- ``comparison``: a ``wandb.Table`` with one row per arm and compared metric (its final and its best epoch): the
  arm and its factors, n, mean, std, Δ, the seed-paired t interval, the per-example interval with its examples,
  seeds and flips, the seeds advice and Holm's p, in the units the terminal shows (accuracies in %);
- ``plots/<name>``: the learning curves and the EDF as images;
- summary values per arm, ``<metric>/<arm>/<mean|std|delta|ci95_low|...>``, for dashboard panels.

It is written offline when ``WANDB_MODE`` says so, or when the trials wrote their runs offline, or when nothing says
it may go online; ``wandb sync`` uploads it later like any offline run.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from lightning_depth.ablation.ledger import Ablation
from lightning_depth.ablation.paired import Analysis
from lightning_depth.ablation.report import Report
from lightning_depth.ablation.spec import short_keys
from lightning_depth.metrics import BEST_SUFFIX

JOB_TYPE = "ablation-report"
DEFAULT_PROJECT = "lightning_depth"  # the pipeline's WandbLogger default
STATS = ("n", "mean", "std", "delta", "ci95_low", "ci95_high", "per_example_delta", "per_example_ci95_low",
         "per_example_ci95_high", "n_examples", "n_seeds", "flips_lost", "flips_gained", "seeds_needed",
         "per_example_seeds_needed", "p_holm")


def report_run_id(ablation_dir: str | os.PathLike) -> str:
    """The report run's id: the same ablation directory always gives the same id."""
    return "ablation-" + hashlib.sha1(str(Path(ablation_dir).resolve()).encode()).hexdigest()[:16]


def trials_log_to_wandb(ablation: Ablation) -> dict[str, Any] | None:
    """The W&B logger options (``init_args``) the trials train with, read from a trial's ``config.yaml``; None
    when they do not log to W&B."""
    for trial in ablation.trials:
        try:
            config = yaml.safe_load((trial.dir / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        loggers = (config.get("trainer") or {}).get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if isinstance(logger, dict) and str(logger.get("class_path", "")).endswith("WandbLogger"):
                return dict(logger.get("init_args") or {})
        return None
    return None


def _offline(ablation: Ablation, options: dict[str, Any]) -> bool:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun")
    if options.get("offline"):
        return True
    # The trials' runs already answered whether this machine may go online: "run-*" online, "offline-run-*" not.
    return not any(next(t.dir.glob("wandb/run-*"), None) for t in ablation.trials)


def _scale(report: Report, key: str, value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value * 100 if key in report.percent else value


def comparison_rows(report: Report, analysis: Analysis) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the ``comparison`` table: arm, factors, metric, then :data:`STATS`."""
    overrides = {t.arm: t.overrides or {} for t in reversed(report.ablation.trials) if t.arm is not None}
    names = short_keys(list(dict.fromkeys(k for o in overrides.values() for k in o)))
    names = {k: name if name not in ("arm", "metric", *STATS) else k for k, name in names.items()}
    keys = [k for k in (report.metric, report.metric + BEST_SUFFIX) if k in report.keys]
    rows = []
    for arm in report.arms:
        factors = [_plain(overrides.get(arm.name, {}).get(k)) for k in names]
        for key in keys:
            stats = arm.metrics[key]
            c = analysis.get(arm.name, key)
            per = c.per_example if c else None
            low, high = stats.ci95 or (None, None)
            pe_low, pe_high = per.ci95 if per else (None, None)
            values = {"n": stats.n, "mean": _scale(report, key, stats.mean), "std": _scale(report, key, stats.std),
                      "delta": _scale(report, key, stats.delta), "ci95_low": _scale(report, key, low),
                      "ci95_high": _scale(report, key, high),
                      "per_example_delta": _scale(report, key, per.delta if per else None),
                      "per_example_ci95_low": _scale(report, key, pe_low),
                      "per_example_ci95_high": _scale(report, key, pe_high),
                      "n_examples": per.n_examples if per else None, "n_seeds": per.n_seeds if per else None,
                      "flips_lost": per.flips[0] if per else None, "flips_gained": per.flips[1] if per else None,
                      "seeds_needed": c.seeds_needed if c else None,
                      "per_example_seeds_needed": per.seeds_needed if per else None,
                      "p_holm": (per.p_holm if per else c.p_holm) if c else None}
            rows.append([arm.name, *factors, key, *(values[s] for s in STATS)])
    return ["arm", *names.values(), "metric", *STATS], rows


def _plain(value: Any) -> Any:
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def summary_values(report: Report, analysis: Analysis) -> dict[str, Any]:
    """``<metric>/<arm>/<stat>`` for every row of the comparison table (the stats that are defined)."""
    columns, rows = comparison_rows(report, analysis)
    arm_at, key_at = columns.index("arm"), columns.index("metric")
    out = {}
    for row in rows:
        for stat in STATS:
            value = row[columns.index(stat)]
            if value is not None:
                out[f"{row[key_at]}/{row[arm_at]}/{stat}"] = value
    return out


def write_wandb_report(report: Report, analysis: Analysis, images: list[Path],
                       options: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """Write (or update) the report run; returns its id and, when offline, the command that uploads it.

    ``options`` are the trials' W&B logger options (project, offline); by default read from their config.
    """
    import wandb

    ablation = report.ablation
    options = options if options is not None else trials_log_to_wandb(ablation) or {}
    offline = _offline(ablation, options)
    save_dir = Path(os.environ.get("WANDB_DIR") or ablation.path)
    run_id = report_run_id(ablation.path)
    run = wandb.init(
        project=options.get("project") or DEFAULT_PROJECT, id=run_id, resume="allow", group=ablation.name,
        job_type=JOB_TYPE, name=f"{ablation.name} (comparison)", dir=str(save_dir),
        mode="offline" if offline else "online", settings=wandb.Settings(silent=True),
        config={"ablation": ablation.name, "design": ablation.design, "metric": report.metric,
                "baseline": report.baseline, "factors": ablation.factors, "trials": len(ablation.trials),
                "directory": str(ablation.path.resolve())},
    )
    try:
        columns, rows = comparison_rows(report, analysis)
        logged: dict[str, Any] = {"comparison": wandb.Table(columns=columns, data=rows)}
        logged.update({f"plots/{path.stem}": wandb.Image(str(path)) for path in images if path.is_file()})
        run.log(logged)
        run.summary.update(summary_values(report, analysis))
        run_dir = os.path.dirname(os.path.abspath(run.dir))
    finally:
        run.finish()
    return run_id, f"wandb sync {run_dir}" if offline else None


def publish(report: Report, analysis: Analysis, images: list[Path], options: dict[str, Any] | None = None) -> bool:
    """:func:`write_wandb_report`, saying on stderr where the run went; a failure is reported there and never costs
    the user the table. True when the run was written (or W&B is switched off with ``WANDB_MODE=disabled``)."""
    if os.environ.get("WANDB_MODE") == "disabled":
        print("W&B is disabled (WANDB_MODE=disabled): no comparison run written", file=sys.stderr)
        return True
    try:
        run_id, sync = write_wandb_report(report, analysis, images, options)
    except Exception as err:  # noqa: BLE001 - W&B trouble (network, disk, settings) must not hide the comparison
        print(f"warning: W&B comparison run not written: {type(err).__name__}: {err}", file=sys.stderr)
        return False
    print(f"W&B: comparison run {run_id} (job type {JOB_TYPE}, group {report.ablation.name})"
          + (f"; offline, upload it with: {sync}" if sync else ""), file=sys.stderr)
    return True
