"""Command line: LightningCLI for fit/validate/test/predict, plus the tools summary, compare, status, bench, trial."""

from __future__ import annotations

import importlib
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import yaml

from lightning_depth.errors import UsageError

# Subcommands that are not a Trainer method: each module exposes ``main(argv: list[str]) -> int``.
TOOLS = {
    "summary": "lightning_depth.summary",
    "compare": "lightning_depth.ablation.report",
    "status": "lightning_depth.ablation.status",
    "bench": "lightning_depth.bench",
    "trial": "lightning_depth.ablation.trial",
}
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
CHECKPOINT_DIR = "checkpoints"
WANDB_ID_FILE = "wandb_id"
# Sections of a run's config that define what is trained; a directory holding another run is never reused.
IDENTITY_KEYS = ("model", "data", "seed_everything")
# Options that steer an ablation or a launch; they are not part of what a run trains.
DRIVER_KEYS = ("config", "ablation", "launcher", "parallel", "retry_failed", "dry_run", "slurm")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in TOOLS:
            return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        return run_cli(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run_cli(argv: list[str]) -> int:
    """Run a Trainer subcommand through LightningCLI; expected failures become one-line UsageErrors."""
    import warnings

    from jsonargparse import ArgumentError

    # LightningCLI warns when given args while sys.argv also has some; here they are the same arguments.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    try:
        DepthCLI(args=argv)
    except ArgumentError as err:
        raise UsageError(_one_line(str(err))) from None
    except AblationExit as done:
        return done.code
    return 0


def _one_line(message: str) -> str:
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


class AblationExit(Exception):
    """Raised after an ablation (which runs its trials as subprocesses) to end the CLI with its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


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


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _build_cli_class():
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from lightning.pytorch.cli import LightningCLI

    import lightning_depth.data  # noqa: F401  (short class names in configs: DigitsDataModule)
    import lightning_depth.models  # noqa: F401  (short class names in configs: ResNet)
    from lightning_depth.callbacks import EpochLines, EpochReseed, RunResult
    from lightning_depth.module import ImageClassifier

    class DepthCLI(LightningCLI):
        """LightningCLI with the pipeline's defaults: W&B + CSV loggers, checkpoints, exact resume, ablations."""

        def __init__(self, args: list[str]) -> None:
            progress = RichProgressBar() if sys.stderr.isatty() else EpochLines()
            super().__init__(
                ImageClassifier,
                LightningDataModule,
                subclass_mode_data=True,
                save_config_callback=None,
                auto_configure_optimizers=False,
                trainer_defaults={
                    "logger": [
                        {"class_path": "lightning_depth.loggers.WandbLogger"},
                        {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": ".", "name": "csv"}},
                    ],
                    "callbacks": [EpochReseed(), RunResult(), progress],
                    "enable_progress_bar": isinstance(progress, RichProgressBar),
                },
                parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
                args=args,
            )

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments("data.num_classes", "model.net.init_args.num_classes", apply_on="instantiate")
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({
                "checkpoint.monitor": "val/acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # last.ckpt has its own callback, saved every epoch
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
            })
            parser.add_argument("--ablation", type=dict | None, default=None,
                                help="Ablation spec (name, design, factors, baseline, seeds): run every trial.")
            parser.add_argument("--launcher", type=Literal["local", "slurm"], default="local",
                                help="Where an ablation's trials run.")
            parser.add_argument("--parallel", type=int, default=1,
                                help="Trials run at once by the local launcher (one per GPU, or CPU slots).")
            parser.add_argument("--retry_failed", "--retry-failed", type=bool, default=False,
                                help="Rerun trials of an ablation that failed before.")
            parser.add_argument("--dry_run", "--dry-run", type=bool, default=False,
                                help="Print an ablation's trials with size and estimated time; train nothing.")
            parser.add_argument("--slurm", type=dict | None, default=None,
                                help="SLURM options over the ablation's slurm: section, e.g. '{partition: gpu}'.")

        def _parse_ckpt_path(self) -> None:
            # LightningCLI reads hyperparameters from --ckpt_path right after parsing: vet the file first.
            subcommand = self.config.get("subcommand")
            if subcommand and self.config[subcommand].get("ckpt_path"):
                check_checkpoint(Path(self.config[subcommand].ckpt_path))
            super()._parse_ckpt_path()

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand]
            if cfg.get("ablation"):
                if self.subcommand != "fit":
                    raise UsageError(f"an ablation: section runs with 'fit', not '{self.subcommand}'")
                from lightning_depth.ablation.run import run_ablation

                raise AblationExit(run_ablation(self._parser("fit"), cfg))
            self.run_dir = prepare_run(self._parser(self.subcommand), cfg, self.subcommand)

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            trainer = super().instantiate_trainer(**kwargs)
            if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
                trainer.callbacks.append(LearningRateMonitor())  # it refuses to run without a logger
            # ModelCheckpoint(save_last=True) refreshes last.ckpt only when a best checkpoint is saved; resuming
            # needs the latest epoch, so a second, unmonitored checkpoint overwrites last.ckpt every epoch.
            trainer.callbacks.append(ModelCheckpoint(dirpath=str(Path(trainer.default_root_dir) / CHECKPOINT_DIR),
                                                     filename="last", monitor=None, save_top_k=1,
                                                     enable_version_counter=False))
            return trainer

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as err:
                # A toggle outside what the paper allows, e.g. ResNet depth=21.
                raise UsageError(_one_line(str(err))) from None

        def before_fit(self) -> None:
            self._log_run_config()

        def _log_run_config(self) -> None:
            from lightning_depth.loggers import print_sync_hint

            cfg = self.config[self.subcommand]
            rev, dirty = git_revision(Path.cwd())
            if rev is None:
                rev, dirty = git_revision(Path(__file__).resolve().parent)
            flat = _flatten(_plain(cfg, drop=DRIVER_KEYS))
            flat.update({"seed": cfg.get("seed_everything"), "git_revision": rev, "git_dirty": dirty})
            for logger in self.trainer.loggers:
                logger.log_hyperparams(flat)
            if _is_rank_zero():
                print_sync_hint(self.trainer.loggers)

    return DepthCLI


def DepthCLI(args: list[str]) -> Any:  # noqa: N802 - a factory, so importing cli.py stays cheap
    return _build_cli_class()(args)


def _plain(cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    data = cfg.clone().as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
    for key in drop:
        data.pop(key, None)
    return yaml.safe_load(yaml.safe_dump(data, default_flow_style=False, sort_keys=False)) if data else {}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


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
    _check_writable(root)
    # The same serialisation an ablation uses for its trials' config.yaml, so the two compare equal.
    resolved = yaml.safe_load(parser.dump(cfg, skip_check=True)) or {}
    for key in DRIVER_KEYS:
        resolved.pop(key, None)
    if subcommand == "fit":
        _guard_identity(root, resolved)
    _configure_loggers(cfg, root)
    if cfg.get("checkpoint") is not None and not cfg.checkpoint.get("dirpath"):
        cfg.checkpoint.dirpath = str(root / CHECKPOINT_DIR)
    if subcommand == "fit" and cfg.get("ckpt_path") is None:
        last = root / CHECKPOINT_DIR / "last.ckpt"
        if last.exists():
            cfg.ckpt_path = str(last)
            if _is_rank_zero():
                print(f"resuming from {last}", file=sys.stderr)
    if cfg.get("ckpt_path"):
        check_checkpoint(Path(cfg.ckpt_path))
    return root


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output directory {root} is not writable ({err.strerror}); "
                         "pass --trainer.default_root_dir PATH") from None


def _guard_identity(root: Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume a run directory that holds a different model, data or seed; record the config."""
    path = root / "config.yaml"
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
    if _is_rank_zero():
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
        os.replace(tmp, path)


def _configure_loggers(cfg: Any, root: Path) -> None:
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
                args.id = _wandb_id(root)


def _wandb_id(root: Path) -> str:
    """One W&B run id per output directory: a resumed run continues the same W&B run."""
    path = root / WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if _is_rank_zero():
        path.write_text(run_id + "\n")
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
