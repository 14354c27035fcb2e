"""``fit``, ``validate``, ``test`` and ``predict``: LightningCLI with the pipeline's loggers, checkpoints and resume.

Importing this module imports Lightning (seconds); ``__main__`` dispatches the lighter tools before it does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ActionYesNo, ArgumentError, set_parsing_settings
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

# Imported for their side effect: LightningCLI then resolves short class names in configs (ResNet, DigitsDataModule).
import lightning_depth.data
import lightning_depth.models  # noqa: F401
from lightning_depth import fmt
from lightning_depth.ablation.run import run_ablation
from lightning_depth.callbacks import Diverged, EpochLines, EpochReseed, PredictionWriter, RunResult, describe_result
from lightning_depth.checkpoints import AtomicCheckpointIO, Preemption
from lightning_depth.configs import (
    IMPORT_ALLOWLIST_KEY,
    TRUSTED_IMPORTS,
    UNTRUSTED_WITHIN,
    import_allowlist,
    one_line,
)
from lightning_depth.data.base import describe_data
from lightning_depth.errors import UsageError
from lightning_depth.evidence_callback import SaveEvidence
from lightning_depth.loggers import finish_runs, print_sync_hint
from lightning_depth.metrics import RESULT_FILE
from lightning_depth.models.complexity import InputSizeError, profile_model
from lightning_depth.module import ImageClassifier
from lightning_depth.runs import (
    CHECKPOINT_DIR,
    PREEMPTION_PREFIX,
    check_checkpoint,
    evaluation_checkpoint,
    flatten,
    git_revision,
    is_rank_zero,
    prepare_run,
    resolved_config,
    start_run,
)

PROG = "python -m lightning_depth"
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
EVALUATING = {"validate": "validating", "test": "testing", "predict": "predicting with"}
# Lightning's info lines that say what the CLI's own lines say (run, device, seed, checkpoint, why fit stopped) or
# advertise another product. Everything else Lightning logs is printed.
QUIET_INFO = re.compile(
    r"(\[rank: \d+\] )?(💡 Tip: |GPU available: |TPU available: |HPU available: |Seed set to "
    r"|`Trainer\.fit` stopped: |Restoring states from the checkpoint path at |Restored all states from the checkpoint"
    r"|Loaded model weights from the checkpoint at )"
)
INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                "lightning.fabric.utilities.seed")


class AblationExit(Exception):  # noqa: N818 - the end of a sweep, not an error
    """Raised after an ablation (which runs its trials as subprocesses) to end the CLI with its exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class DepthCLI(LightningCLI):
    """LightningCLI with the pipeline's defaults: W&B + CSV loggers, checkpoints, exact resume, ablations."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        progress = RichProgressBar() if sys.stderr.isatty() else EpochLines()
        self.requested = args[0] if args and args[0] in TRAINER_COMMANDS else None
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
                "callbacks": [EpochReseed(), RunResult(), SaveEvidence(), PredictionWriter(), progress],
                "enable_progress_bar": isinstance(progress, RichProgressBar),
            },
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False, "prog": PROG},
            args=args,
            run=run,
        )

    def subcommands(self) -> dict[str, set[str]]:
        """Lightning's subcommands; only the one being run when the arguments name it: each subcommand's parser
        takes a few tenths of a second to build, paid by every command and every trial."""
        every = LightningCLI.subcommands()
        return {self.requested: every[self.requested]} if self.requested else every

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
        parser.add_argument("--ablation", type=dict | None, default=None, sub_configs=True,
                            help="Ablation spec (name, design, factors, baseline, seeds), or a file holding one: "
                                 "run every trial.")
        parser.add_argument("--launcher", type=Literal["local", "slurm"], default="local",
                            help="Where an ablation's trials run.")
        parser.add_argument("--parallel", type=int, default=1,
                            help="Trials run at once by the local launcher (one per GPU, or CPU slots).")
        parser.add_argument("--fork_server", "--fork-server", type=bool, default=True,
                            help="Local trials are forks of a process that has imported torch, Lightning and W&B, "
                                 "sharing one W&B service; false: a fresh Python per trial, as on SLURM.")
        # Flags: --retry-failed alone means true, as do --retry-failed true and retry_failed: true in a config.
        parser.add_argument("--retry_failed", "--retry-failed", action=ActionYesNo, nargs="?", default=False,
                            help="Rerun trials of an ablation that failed before.")
        parser.add_argument("--dry_run", "--dry-run", action=ActionYesNo, nargs="?", default=False,
                            help="Print an ablation's trials with size and estimated time; train nothing.")
        parser.add_argument("--ignore_queue", "--ignore-queue", action=ActionYesNo, nargs="?", default=False,
                            help="Submit or launch even when SLURM's queue cannot be asked whether an earlier job "
                                 "of the ablation still holds its trials.")
        parser.add_argument("--slurm", type=dict | None, default=None,
                            help="SLURM options over the ablation's slurm: section, e.g. '{partition: gpu}'.")
        parser.add_argument(f"--{IMPORT_ALLOWLIST_KEY}", type=list[str], default=[],
                            help="Import prefixes a config may name besides lightning_depth, torch, torchvision, "
                                 "timm and lightning (configs are code: a class_path is imported and run).")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads hyperparameters from --ckpt_path right after parsing: vet the file first. Evaluating
        # commands take the run directory's best checkpoint unless told otherwise.
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else None
        if subcommand in EVALUATING and not cfg.get("ablation"):
            path, which = evaluation_checkpoint(cfg, subcommand)
            cfg.ckpt_path = str(path)
            if is_rank_zero():
                print(f"{EVALUATING[subcommand]} {path} ({which})", file=sys.stderr)
        elif cfg is not None and cfg.get("ckpt_path"):
            check_checkpoint(Path(cfg.ckpt_path))
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if cfg.get("ablation"):
            if self.subcommand != "fit":
                raise UsageError(f"an ablation: section runs with 'fit', not '{self.subcommand}'")
            # A spec read from a file carries its path as jsonargparse metadata (__path__), which is no spec key.
            raise AblationExit(run_ablation(self._parser("fit"), cfg.clone(with_meta=False)))
        # Decided now, written only once the model, the data and the trainer are known to be good.
        self.run_plan = prepare_run(self._parser(self.subcommand), cfg, self.subcommand)
        self.run_dir = self.run_plan.root

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        # Lightning's summary table has a FLOPs column that reads 0 without an example input; unless asked for it
        # (enable_model_summary: true, which then gets one), the CLI prints one line with the project's own count.
        summary = self._get(self.config_init, "trainer", default={}).get("enable_model_summary")
        self.model_line = summary is None
        if self.model_line:
            kwargs.setdefault("enable_model_summary", False)
        elif summary and getattr(self.model, "example_input_array", None) is None:
            shape = self._input_shape()
            if shape is not None:
                self.model.example_input_array = torch.zeros(1, *shape)
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]  # no checkpoint staged in $TMPDIR or half-written
        trainer = super().instantiate_trainer(**kwargs)
        checkpoints = Path(trainer.default_root_dir) / CHECKPOINT_DIR
        trainer.callbacks.append(Preemption(checkpoints, PREEMPTION_PREFIX))
        if trainer.loggers and not any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks):
            trainer.callbacks.append(LearningRateMonitor())  # it refuses to run without a logger
        # ModelCheckpoint(save_last=True) refreshes last.ckpt only when a best checkpoint is saved; resuming
        # needs the latest epoch, so a second, unmonitored checkpoint overwrites last.ckpt every epoch.
        trainer.callbacks.append(ModelCheckpoint(dirpath=str(checkpoints), filename="last", monitor=None, save_top_k=1,
                                                 enable_version_counter=False))
        return trainer

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            # A toggle outside what the paper allows, e.g. ResNet depth=21.
            raise UsageError(one_line(str(err))) from None
        if is_rank_zero():
            self._check_data()
        start_run(self.run_plan)
        if is_rank_zero():
            self._print_run()

    def _check_data(self) -> None:
        """Read the data as the command will: missing or unreadable data is one line now, before any file, logger
        or W&B run exists. The data modules keep what they read, so Lightning's own setup reads nothing twice; other
        DDP ranks start inside the Trainer, after this process has checked."""
        self.datamodule.trainer = self.trainer  # a module that holds its data on the device places it there
        self.datamodule.prepare_data()
        self.datamodule.setup(self.subcommand)

    def _input_shape(self) -> tuple[int, int, int] | None:
        size = getattr(self.datamodule, "image_size", None)
        return (getattr(self.datamodule, "in_channels", 3), size, size) if size else None

    def _print_run(self) -> None:
        """What the command runs, in three lines: where it writes and on what, the network's size, the data."""
        cfg = self.config[self.subcommand]
        n = self.trainer.num_devices
        device = f"{n} {self.trainer.strategy.root_device.type} device{'s' if n > 1 else ''}"
        print(f"run: {self.run_plan.root} ({self.subcommand}, seed {cfg.get('seed_everything')}, {device})",
              file=sys.stderr)
        if self.model_line:
            net = self.model.net
            shape = self._input_shape()
            line = f"{type(net).__name__}: params {fmt.count(sum(p.numel() for p in net.parameters()))}"
            try:
                line = profile_model(net, shape[1:], in_channels=shape[0]).line() if shape else line
            except InputSizeError as err:
                line = f"{line} ({err})"
            print(f"model: {line}", file=sys.stderr)
        print(f"data: {describe_data(self.datamodule)}", file=sys.stderr)

    def before_fit(self) -> None:
        self._log_run_config()

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / RESULT_FILE
            if path.is_file():
                print(f"{describe_result(json.loads(path.read_text()))}; in {path}", file=sys.stderr)
        self._finish()

    def after_validate(self) -> None:
        self._finish()

    def after_test(self) -> None:
        self._finish()

    def after_predict(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.trainer.is_global_zero:
            print_sync_hint(self.trainer.loggers)
            finish_runs(self.trainer.loggers)  # a trial counts as done only once its W&B run is written

    def _log_run_config(self) -> None:
        cfg = self.config[self.subcommand]
        rev, dirty = git_revision(Path.cwd())
        if rev is None:
            rev, dirty = git_revision(Path(__file__).resolve().parent)
        flat = flatten(resolved_config(self._parser(self.subcommand), cfg))
        flat.update({"seed": cfg.get("seed_everything"), "git_revision": rev, "git_dirty": dirty})
        for logger in self.trainer.loggers:
            logger.log_hyperparams(flat)


class _QuietInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not QUIET_INFO.match(record.getMessage())


def quiet_console() -> None:
    """Leave out the console lines a user can do nothing about, each by its exact message; every other warning and
    info line is printed."""
    # LightningCLI warns when given args while sys.argv also has some; here they are the same arguments.
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    if "SLURM_JOB_ID" not in os.environ:
        # Lightning suggests srun whenever the command exists, even outside any SLURM job, where it does not apply.
        # Inside an allocation the hint can matter, and stays.
        warnings.filterwarnings("ignore", message=re.escape("The `srun` command is available on your system but is "
                                                            "not used"), category=PossibleUserWarning)
    # Lightning's own use of a torch API that torch deprecated: nothing a user of this CLI can change.
    warnings.filterwarnings("ignore", message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
                            category=FutureWarning)
    for name in INFO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietInfo) for f in logger.filters):
            logger.addFilter(_QuietInfo())


def allow_imports(extra: list[str]) -> None:
    """jsonargparse refuses every import path a value names outside ``TRUSTED_IMPORTS`` and ``extra`` (its own
    setting, process-wide; paths from code, such as type hints and defaults, are never checked)."""
    set_parsing_settings(import_path_denylist=["*", *UNTRUSTED_WITHIN],
                         import_path_allowlist=[*TRUSTED_IMPORTS, *extra])


def run_cli(argv: list[str]) -> int:
    """Run a Trainer subcommand through LightningCLI; expected failures become one-line UsageErrors."""
    quiet_console()
    allow_imports(import_allowlist(argv))
    try:
        DepthCLI(args=argv)
    except ArgumentError as err:
        raise UsageError(one_line(str(err))) from None
    except AblationExit as done:
        return done.code
    except Diverged as err:
        print(f"{err}; {RESULT_FILE} records it", file=sys.stderr)
        return 1
    return 0
