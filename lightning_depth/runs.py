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
from pathlib import Path
from typing import Any

import yaml

from lightning_depth.atomic import write_atomic
from lightning_depth.errors import UsageError

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
CONFIG_FILE = "config.yaml"
WANDB_ID_FILE = "wandb_id"
# Sections of a run's config that define what is trained; a directory holding another run is never reused.
IDENTITY_KEYS = ("model", "data", "seed_everything")
# Options that steer an ablation or a launch, not what a run trains. ``ckpt_path`` is among them: a run's identity
# and a trial's id must not change because one attempt resumed from a checkpoint and another did not.
DRIVER_KEYS = ("config", "ablation", "launcher", "parallel", "retry_failed", "dry_run", "slurm", "ckpt_path")
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


def one_line(message: str) -> str:
    """jsonargparse explains a nested failure over several lines; say it in one: the full key and the reason."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    path, reasons, nested_class = "", [], False
    for line in lines:
        key = re.match(r'^(?:- )?Parser key "([^"]+)":?\s*(.*)$', line)
        if key:
            path = f"{path}.init_args.{key[1]}" if path and nested_class else (f"{path}.{key[1]}" if path else key[1])
            nested_class = False
            if key[2]:
                reasons.append(key[2])
        elif line.startswith("Problem with given class_path"):
            nested_class = True
        else:
            reasons.append(line.lstrip("- "))
    reason = reasons[-1] if reasons else lines[0]
    reason = re.sub(r"Expected a <class .([\w.]+).>", r"expected \1", reason).strip("() ")
    return f"{path}: {reason}" if path else reason


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


def prepare_run(parser: Any, cfg: Any, subcommand: str) -> Path:
    """Fix the run directory, point loggers and checkpoints into it, and resume from its last checkpoint."""
    root = default_root_dir(cfg)
    cfg.trainer.default_root_dir = str(root)
    check_writable(root)
    resolved = resolved_config(parser, cfg)
    if subcommand == "fit":
        guard_identity(root, resolved)
    configure_loggers(cfg, root)
    if cfg.get("checkpoint") is not None and not cfg.checkpoint.get("dirpath"):
        cfg.checkpoint.dirpath = str(root / CHECKPOINT_DIR)
    if subcommand == "fit" and cfg.get("ckpt_path") is None:
        last = root / CHECKPOINT_DIR / LAST_CHECKPOINT
        if last.exists():
            cfg.ckpt_path = str(last)
            if is_rank_zero():
                print(f"resuming from {last}", file=sys.stderr)
    if cfg.get("ckpt_path"):
        check_checkpoint(Path(cfg.ckpt_path))
    return root


def check_writable(root: Path) -> None:
    """Create ``root`` or fail with one line naming it and how to choose another."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output directory {root} is not writable ({err.strerror}); "
                         "pass --trainer.default_root_dir PATH") from None


def guard_identity(root: Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume a run directory that holds a different model, data or seed; record the config."""
    path = root / CONFIG_FILE
    identity = {k: resolved.get(k) for k in IDENTITY_KEYS}
    if path.exists():
        try:
            old = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            old = {}
        old_identity = {k: old.get(k) for k in IDENTITY_KEYS}
        if old_identity != identity:
            changed = [k for k in IDENTITY_KEYS if old_identity[k] != identity[k]]
            raise UsageError(
                f"{root} holds a run with a different {', '.join(changed)}; its checkpoints are kept: pass "
                "--trainer.default_root_dir NEW_DIR for this configuration"
            )
        return
    if is_rank_zero():
        write_atomic(path, yaml.safe_dump(resolved, sort_keys=False))


def configure_loggers(cfg: Any, root: Path) -> None:
    """Point every logger into the run directory; the W&B logger continues the directory's W&B run."""
    loggers = cfg.trainer.get("logger")
    if not isinstance(loggers, list):
        loggers = [loggers] if loggers not in (None, True, False) else []
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
                args.id = wandb_id(root)


def wandb_id(root: Path) -> str:
    """One W&B run id per output directory: a resumed run continues the same W&B run."""
    path = root / WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if is_rank_zero():
        write_atomic(path, run_id + "\n")
    return run_id


def check_checkpoint(path: Path) -> None:
    """Open a checkpoint without executing pickled code; a corrupt or foreign file is one clear line."""
    import torch

    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the file cannot be trusted
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UsageError(f"checkpoint {path} is corrupt or not a safe lightning_depth checkpoint ({reason})") \
            from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UsageError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
