"""Run plumbing: where a run writes, what identifies it, how it resumes, and which process keeps its files.

A run directory holds ``config.yaml`` (the resolved configuration, written before anything trains),
``checkpoints/`` (``last.ckpt`` every epoch, ``best-epoch*.ckpt``), ``wandb_id`` (one W&B run per directory, so a
resumed run continues it), ``csv/`` and ``result.json``. Running the same command again resumes from ``last.ckpt``;
a directory that holds a run of another model, data or seed is never reused.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_depth.atomic import TEMP_SUFFIX, previous_path, write_atomic
from lightning_depth.errors import UsageError

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# Written on SLURM's requeue signal or SIGTERM, mid-epoch: ``preempted-step000001234.ckpt``.
PREEMPTION_PREFIX = "preempted-step"
# Which checkpoint a resume prefers among those of equal progress: the epoch's own, then the one it replaced.
RESUME_PREFERENCE = (LAST_CHECKPOINT, previous_path(LAST_CHECKPOINT).name, PREEMPTION_PREFIX)
CONFIG_FILE = "config.yaml"
WANDB_ID_FILE = "wandb_id"
# Sections of a run's config that define what is trained; a directory holding another run is never reused.
IDENTITY_KEYS = ("model", "data", "seed_everything")
# Options that steer an ablation or a launch, not what a run trains. ``ckpt_path`` is among them: a run's identity
# and a trial's id must not change because one attempt resumed from a checkpoint and another did not.
DRIVER_KEYS = ("config", "ablation", "launcher", "parallel", "fork_server", "retry_failed", "dry_run", "slurm",
               "ckpt_path", "ignore_queue")
# Environment variables through which launchers (torchrun, Lightning's DDP, srun) tell a process its rank.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    """Whether this process keeps the run's files: rank 0, or the only process. Readable before Lightning starts."""
    return all(os.environ.get(var, "0") == "0" for var in RANK_VARIABLES)


def resolved_config(parser: Any, cfg: Any) -> dict[str, Any]:
    """The configuration as plain data, without driver options: what ``config.yaml`` holds and what identifies a
    run or a trial. The one serialisation, so a run and the trial that wrote it compare equal by construction."""
    data = yaml.safe_load(parser.dump(cfg, skip_check=True)) or {}
    for key in DRIVER_KEYS:
        data.pop(key, None)
    return data


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys, the form W&B's config table shows."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def git_revision(path: Path) -> tuple[str | None, bool | None]:
    """The git commit of ``path``'s repository and whether its tree has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return rev.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def default_root_dir(cfg: Any) -> Path:
    """``trainer.default_root_dir``, or ``runs/<config name>`` so two experiments never share a directory."""
    if cfg.trainer.get("default_root_dir"):
        return Path(cfg.trainer.default_root_dir)
    configs = [c for c in (cfg.get("config") or []) if c is not None]
    name = Path(str(configs[-1])).stem if configs else "default"
    return Path("runs") / name


@dataclass
class RunPlan:
    """What a run will write, decided before anything is written: a command refused later leaves no trace."""

    root: Path
    config: dict[str, Any] | None = None  # the resolved config to record, when the directory has none yet
    wandb_id: str | None = None  # a new W&B run id to record, when the directory has none yet
    obsolete: list[Path] = field(default_factory=list)  # older preemption checkpoints, files of interrupted writes


def prepare_run(parser: Any, cfg: Any, subcommand: str) -> RunPlan:
    """Fix the run directory, point loggers and checkpoints into it, and resume from its last checkpoint.

    Writes nothing: the directory is checked, not created, so that a command refused afterwards (a missing dataset,
    an invalid toggle) leaves no directory and no W&B run behind. ``start_run`` writes what this decided.
    """
    root = default_root_dir(cfg)
    cfg.trainer.default_root_dir = str(root)
    check_writable(root)
    plan = RunPlan(root)
    unclaimed = False
    if subcommand == "fit":
        resolved = resolved_config(parser, cfg)
        if not guard_identity(root, resolved):
            plan.config = resolved
            # A run of another configuration stopped here before its first checkpoint: this one takes the
            # directory over, with a W&B run of its own.
            unclaimed = (root / CONFIG_FILE).exists()
    plan.wandb_id = configure_loggers(cfg, root, new_wandb_run=unclaimed)
    if cfg.get("checkpoint") is not None and not cfg.checkpoint.get("dirpath"):
        cfg.checkpoint.dirpath = str(root / CHECKPOINT_DIR)
    if subcommand == "fit" and cfg.get("ckpt_path") is None:
        resume = resume_checkpoint(root)
        if resume is not None:
            cfg.ckpt_path = str(resume)
            if is_rank_zero():
                print(f"resuming from {resume}", file=sys.stderr)
        plan.obsolete = [p for p in (root / CHECKPOINT_DIR).glob(f"{PREEMPTION_PREFIX}*.ckpt") if p != resume]
        plan.obsolete += list((root / CHECKPOINT_DIR).glob(f".*{TEMP_SUFFIX}"))
    elif cfg.get("ckpt_path"):
        check_checkpoint(Path(cfg.ckpt_path))
    return plan


def start_run(plan: RunPlan) -> None:
    """Create the run directory and record its config and W&B run id (rank 0 writes; every rank needs the folder)."""
    try:
        plan.root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"output directory {plan.root} is not writable ({err.strerror}); "
                         "pass --trainer.default_root_dir PATH") from None
    if not is_rank_zero():
        return
    # prepare_run decided these: a new run's config and W&B id, or those of a run that stopped before its first
    # checkpoint and is replaced.
    if plan.config is not None:
        write_atomic(plan.root / CONFIG_FILE, yaml.safe_dump(plan.config, sort_keys=False))
    if plan.wandb_id is not None:
        write_atomic(plan.root / WANDB_ID_FILE, plan.wandb_id + "\n")
    for path in plan.obsolete:
        path.unlink(missing_ok=True)


def check_writable(root: Path) -> None:
    """Fail with one line naming ``root`` when it cannot be created or written; creates nothing."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        reason = "a file is in the way" if existing.exists() else "no such directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = "permission denied"
    else:
        return
    raise UsageError(f"output directory {root} is not writable ({reason}: {existing}); "
                     "pass --trainer.default_root_dir PATH")


def guard_identity(root: Path, resolved: dict[str, Any]) -> bool:
    """Refuse to resume a run directory that holds a different model, data or seed; True when it holds this run.

    A directory holds a run once it has a checkpoint: one whose run failed before that (a typo in the config, a
    crash in the first epoch) is free for the corrected command.
    """
    path = root / CONFIG_FILE
    identity = {k: resolved.get(k) for k in IDENTITY_KEYS}
    if not path.exists():
        return False
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        old = {}
    old_identity = {k: old.get(k) for k in IDENTITY_KEYS}
    if old_identity != identity and not checkpoint_files(root):
        return False
    if old_identity != identity:
        changed = [k for k in IDENTITY_KEYS if old_identity[k] != identity[k]]
        raise UsageError(
            f"{root} holds a run with a different {', '.join(changed)}; its checkpoints are kept: pass "
            "--trainer.default_root_dir NEW_DIR for this configuration"
        )
    return True


def configure_loggers(cfg: Any, root: Path, new_wandb_run: bool = False) -> str | None:
    """Point every logger into the run directory; the W&B logger continues the directory's W&B run (a new one
    with ``new_wandb_run``).

    Returns the W&B run id when ``start_run`` must record it: a new one, or one recovered for a damaged id file.
    """
    loggers = cfg.trainer.get("logger")
    if not isinstance(loggers, list):
        loggers = [loggers] if loggers not in (None, True, False) else []
    new_id = None
    for logger in loggers:
        if not hasattr(logger, "class_path"):
            continue
        args = logger.init_args
        if "save_dir" in args and args.save_dir in (None, ".", "", "./"):
            args.save_dir = str(root)
        if logger.class_path.endswith("WandbLogger"):
            if os.environ.get("WANDB_DIR"):
                args.save_dir = os.environ["WANDB_DIR"]
            if not args.get("id"):
                recorded = None if new_wandb_run else wandb_id(root, Path(args.get("save_dir") or root))
                args.id = recorded or secrets.token_hex(4)
                if recorded is None or recorded != _read_id(root / WANDB_ID_FILE):
                    new_id = args.id
    return new_id


# What W&B accepts as a run id; anything else in the id file is damage, not an id.
WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def wandb_id(root: Path, wandb_dir: Path | None = None) -> str | None:
    """The W&B run of this output directory, so that a resumed run continues it; None when it has none yet.

    An empty or damaged id file never starts a second W&B run silently: the id is recovered from the run's own W&B
    files (``<wandb_dir>/wandb/*run-*-<id>``) with one line saying so, or the command stops with one line saying how
    to choose. Reads, never writes.
    """
    path = root / WANDB_ID_FILE
    if not path.exists():
        return None
    recorded = _read_id(path)
    if recorded is not None:
        return recorded
    runs = sorted((wandb_dir or root).glob("wandb/*run-*-*"), key=lambda p: p.stat().st_mtime)
    ids = [p.name.rsplit("-", 1)[1] for p in runs if WANDB_ID.fullmatch(p.name.rsplit("-", 1)[1])]
    if ids:
        if is_rank_zero():
            print(f"{path} is empty or damaged; continuing the W&B run {ids[-1]} found in {runs[-1]}",
                  file=sys.stderr)
        return ids[-1]
    raise UsageError(f"{path} is empty or damaged and no W&B run of this directory was found; write the id of the "
                     "W&B run to continue into it, or delete it to start a new W&B run")


def _read_id(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if WANDB_ID.fullmatch(text) else None


def checkpoint_files(root: Path) -> list[Path]:
    """Every checkpoint of a run directory: ``checkpoints/*.ckpt`` and Lightning's own ``hpc_ckpt_*.ckpt``."""
    found = [*(root / CHECKPOINT_DIR).glob("*.ckpt"), *root.glob("hpc_ckpt_*.ckpt")]
    return sorted(p for p in found if p.is_file() and not p.name.startswith("."))


def resume_checkpoint(root: Path) -> Path | None:
    """The checkpoint a run continues from: the furthest trained one that loads, None when there is none.

    Among equally far ones the epoch's ``last.ckpt`` comes first, then the one it replaced, then a preemption
    checkpoint. A file that does not load is named in one line and passed over; when none loads, the command stops
    with one line naming them and what to move aside.
    """
    found, broken = [], []
    for path in checkpoint_files(root):
        try:
            ckpt = load_checkpoint(path)
        except UsageError as err:
            broken.append(f"{path.name} ({str(err).rsplit(' (', 1)[-1].rstrip(')')})")
            continue
        rank = next((len(RESUME_PREFERENCE) - i for i, name in enumerate(RESUME_PREFERENCE)
                     if path.name.startswith(name)), 0)
        found.append((int(ckpt.get("global_step", -1)), rank, path))
    if not found and not broken:
        return None
    folder = root / CHECKPOINT_DIR
    if not found:
        raise UsageError(f"no checkpoint of {root} loads: {'; '.join(broken)}; move them aside (e.g. into "
                         f"{folder / 'broken'}) to train this run from the start")
    chosen = max(found)[2]
    if broken and is_rank_zero():
        print(f"passing over checkpoints that do not load: {'; '.join(broken)}; resuming from {chosen.name}",
              file=sys.stderr)
    return chosen


def evaluation_checkpoint(cfg: Any, subcommand: str) -> tuple[Path, str]:
    """The checkpoint ``validate``, ``test`` and ``predict`` load, and in a few words which one it is.

    ``--ckpt_path FILE`` is that file; without one (or with ``best``) the run directory's best checkpoint by the
    monitored metric, else its last; ``last`` asks for the last. A run directory without a checkpoint is refused:
    evaluating freshly initialised weights is never what a user meant.
    """
    requested = cfg.get("ckpt_path")
    if requested not in (None, "best", "last"):
        check_checkpoint(Path(requested))
        return Path(requested), "given"
    checkpoint = cfg.get("checkpoint")
    folder = Path((checkpoint.get("dirpath") if checkpoint is not None else None)
                  or default_root_dir(cfg) / CHECKPOINT_DIR)
    monitor = checkpoint.get("monitor") if checkpoint is not None else None
    last = folder / LAST_CHECKPOINT
    best = best_checkpoint(folder, checkpoint.get("filename") if checkpoint is not None else None, last)
    if requested != "last" and best is not None:
        check_checkpoint(best)
        return best, f"the best by {monitor}" if monitor else "the best"
    if requested == "best":
        raise UsageError(f"{folder} holds no best checkpoint; pass --ckpt_path last or --ckpt_path FILE")
    if last.is_file():
        check_checkpoint(last)
        return last, "the last" if requested == "last" else "the last; no best checkpoint was saved"
    raise UsageError(f"{folder.parent if folder.name == CHECKPOINT_DIR else folder} holds no checkpoint to "
                     f"{subcommand}: train it first with 'fit' and the same --config, or pass --ckpt_path FILE")


def best_checkpoint(folder: Path, filename: str | None, last: Path) -> Path | None:
    """The monitored checkpoint in ``folder``: with one kept (``save_top_k=1``) that one, with several the one the
    last checkpoint's ModelCheckpoint state names as best, else the newest."""
    prefix = (filename or "").split("{")[0]
    found = [p for p in folder.glob(f"{prefix}*.ckpt")
             if p.is_file() and not p.name.startswith((".", Path(LAST_CHECKPOINT).stem, PREEMPTION_PREFIX))]
    replaced = {previous_path(p).name for p in found}  # kept by an atomic write beside the file that replaced it
    found = [p for p in found if p.name not in replaced]
    if len(found) <= 1:
        return found[0] if found else None
    if last.is_file():
        try:
            import torch

            states = torch.load(last, map_location="cpu", weights_only=True).get("callbacks", {})
            named = {Path(str(s.get("best_model_path", ""))).name for s in states.values() if isinstance(s, dict)}
            for path in found:
                if path.name in named:
                    return path
        except Exception:  # noqa: BLE001 - an unreadable last checkpoint only costs the precise choice
            pass
    return max(found, key=lambda p: p.stat().st_mtime)


def check_checkpoint(path: Path) -> None:
    """Open a checkpoint without executing pickled code; a corrupt or foreign file is one clear line."""
    load_checkpoint(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's content, loaded without executing pickled code (tensors memory-mapped, not read); a corrupt or
    foreign file is a UsageError of one line."""
    import torch

    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # the format before torch 1.6
    except Exception as err:  # noqa: BLE001 - any failure here means the file cannot be trusted
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UsageError(f"checkpoint {path} is corrupt or not a safe lightning_depth checkpoint ({reason})") \
            from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return ckpt
