"""``fit``, ``validate``, ``test`` and ``predict``: LightningCLI with the pipeline's loggers, checkpoints and resume.

Importing this module imports Lightning (seconds); ``__main__`` dispatches the lighter tools before it does.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentError
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI

# Imported for their side effect: LightningCLI then resolves short class names in configs (ResNet, DigitsDataModule).
import lightning_depth.data
import lightning_depth.models  # noqa: F401
from lightning_depth.ablation.run import run_ablation
from lightning_depth.callbacks import EpochLines, EpochReseed, RunResult
from lightning_depth.errors import UsageError
from lightning_depth.loggers import print_sync_hint
from lightning_depth.module import ImageClassifier
from lightning_depth.runs import (
    CHECKPOINT_DIR,
    check_checkpoint,
    flatten,
    git_revision,
    is_rank_zero,
    one_line,
    prepare_run,
    resolved_config,
)

PROG = "python -m lightning_depth"
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


class AblationExit(Exception):  # noqa: N818 - the end of a sweep, not an error
    """Raised after an ablation (which runs its trials as subprocesses) to end the CLI with its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class DepthCLI(LightningCLI):
    """LightningCLI with the pipeline's defaults: W&B + CSV loggers, checkpoints, exact resume, ablations."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        progress = RichProgressBar() if sys.stderr.isatty() else EpochLines()
        super().__init__(
            ImageClassifier,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_callback=None,  # the run directory's config.yaml is written before anything trains
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
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False, "prog": PROG},
            args=args,
            run=run,
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
            raise UsageError(one_line(str(err))) from None

    def before_fit(self) -> None:
        self._log_run_config()

    def _log_run_config(self) -> None:
        cfg = self.config[self.subcommand]
        rev, dirty = git_revision(Path.cwd())
        if rev is None:
            rev, dirty = git_revision(Path(__file__).resolve().parent)
        flat = flatten(resolved_config(self._parser(self.subcommand), cfg))
        flat.update({"seed": cfg.get("seed_everything"), "git_revision": rev, "git_dirty": dirty})
        for logger in self.trainer.loggers:
            logger.log_hyperparams(flat)
        if is_rank_zero():
            print_sync_hint(self.trainer.loggers)


def run_cli(argv: list[str]) -> int:
    """Run a Trainer subcommand through LightningCLI; expected failures become one-line UsageErrors."""
    # LightningCLI warns when given args while sys.argv also has some; here they are the same arguments.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    try:
        DepthCLI(args=argv)
    except ArgumentError as err:
        raise UsageError(one_line(str(err))) from None
    except AblationExit as done:
        return done.code
    return 0
