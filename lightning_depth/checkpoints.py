"""How checkpoints reach the disk, and the one written when the cluster takes the node away.

Lightning stages a checkpoint in memory and in ``$TMPDIR`` and moves it into place; across filesystems (a node-local
temporary directory, runs on NFS or Lustre) that move copies into the existing file, so a kill during it truncates
the previous good checkpoint, and a small temporary directory fails the save. :class:`AtomicCheckpointIO` writes
through :func:`lightning_depth.atomic.atomic_file` instead, and keeps the file it replaces as
``<name>.previous.ckpt`` (for ``last.ckpt``: the epoch before).

:class:`Preemption` handles SLURM's requeue signal (``--signal=USR1@lead``, or ``scancel --signal=USR1``) and
SIGTERM (what preemption with a grace time, and most process managers, send): at the next batch boundary it writes a
checkpoint that the resumed run continues from mid-epoch, closes the W&B run so that nothing logged is lost, asks
SLURM to requeue the job (USR1 only) and stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_depth.atomic import atomic_file
from lightning_depth.loggers import finish_preempted

# What SLURM sends before the time limit (the job script's --signal=USR1@lead); Lightning's default too.
REQUEUE_SIGNAL = signal.SIGUSR1


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into a temporary file beside the target, fsynced, then renamed over it.

    The file it replaces is kept as ``<name>.previous.ckpt``. Remote paths (``s3://``) go to Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, keep_previous=True) as f:
            torch.save(checkpoint, f)


class Preemption(Callback):
    """On USR1 (under SLURM) or SIGTERM: checkpoint at the next batch boundary, close W&B, requeue, stop.

    The checkpoint is taken where Lightning takes its own mid-epoch checkpoints (``on_train_batch_end``), and the
    process stops at the start of the next batch, after the finished batch's metrics have reached the loggers. A
    signal at the last batch of an epoch writes nothing extra: the epoch's ``last.ckpt`` is newer.

    Args:
        dirpath: directory of the run's checkpoints.
        prefix: file name prefix of the checkpoints this callback writes (``<prefix><global step>.ckpt``).
    """

    def __init__(self, dirpath: str | os.PathLike, prefix: str) -> None:
        self.dirpath = Path(dirpath)
        self.prefix = prefix
        self.received: set[int] = set()
        self._stopping = False

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installed its handlers just before (and puts the original ones back when fit ends, also after an
        # error); replacing them here keeps its USR1 handler, which checkpoints inside the handler, wherever the
        # interpreter happens to be in a training step, from running during training.
        if threading.current_thread() is not threading.main_thread():
            return
        self.received.clear()
        signals = [signal.SIGTERM, REQUEUE_SIGNAL] if SLURMEnvironment.detect() else [signal.SIGTERM]
        for signum in signals:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.add(signum)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._stopping:
            return
        signalled = bool(self.received)
        if trainer.world_size > 1:  # every rank stops at the same batch, or the next collective waits for ever
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if not signalled:
            return
        self._stopping = True
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            path = self.dirpath / f"{self.prefix}{trainer.global_step:09d}.ckpt"
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                self.prune(keep=path)
                print(f"signal received: checkpoint written to {path}", file=sys.stderr, flush=True)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self._stopping:
            return
        requeue = REQUEUE_SIGNAL in self.received
        if trainer.is_global_zero:
            finish_preempted(trainer.loggers)
            if requeue:
                _requeue()
        raise SIGTERMException(128 + int(REQUEUE_SIGNAL if requeue else signal.SIGTERM))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.prune(keep=None)  # the final last.ckpt is newer than any of them

    def prune(self, keep: Path | None) -> None:
        """Remove this callback's checkpoints except ``keep``."""
        for path in self.dirpath.glob(f"{self.prefix}*.ckpt"):
            if path != keep:
                path.unlink(missing_ok=True)


def _requeue() -> None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode == 0:
        print(f"requeued SLURM job {job}", file=sys.stderr, flush=True)
    else:
        print(f"could not requeue SLURM job {job}: {result.stderr.strip()}", file=sys.stderr, flush=True)
