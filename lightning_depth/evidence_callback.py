"""The callback that keeps every run's per-example evidence (:mod:`lightning_depth.evidence`): the predicted class
and whether it was right, for every validation example at the last and at the best epoch, and for every test example.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import IterableDataset, RandomSampler

from lightning_depth.evidence import TOP1, TOP5, evidence_path, save_evidence


class SaveEvidence(Callback):
    """Writes ``evidence/val_final.npz`` after every validation epoch of a fit, ``evidence/val_best.npz`` when
    val/acc1 improves on every earlier epoch, and ``evidence/test.npz`` after ``test``.

    Per batch it keeps the predicted class and two correctness bits on the device (no synchronisation inside the
    loop); once per epoch they come to the host, DDP ranks gather them to rank 0 and rank 0 writes the file. An
    example's index is its position in the split, read from the loader's batch sampler in step with the batches,
    so it holds under a distributed sampler too. The evaluated module's ``validation_step`` and ``test_step`` return
    their logits; a module that returns nothing keeps no evidence.
    """

    def __init__(self) -> None:
        self.best: float | None = None  # the best val/acc1 so far; stored in checkpoints for resumed runs
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._batches: Iterator[list[int]] | None = None
        self._position = 0
        self._active = False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")

    # -- collecting --------------------------------------------------------------------------------------------------

    def _start(self, trainer: Trainer, loaders: Any) -> None:
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        self._parts, self._position, self._batches = [], 0, _index_batches(loader)
        # Without a sampler to read indices from, only a single process knows each example's position.
        self._active = self._batches is not None or trainer.world_size == 1

    def _collect(self, outputs: Any, batch: Any, dataloader_idx: int) -> None:
        if not self._active or dataloader_idx != 0 or not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
            return
        target = batch[1]
        indices = next(self._batches, None) if self._batches is not None else \
            range(self._position, self._position + len(target))
        self._position += len(target)
        if indices is None or len(indices) != len(target):
            print("warning: per-example evidence skipped: the loader's batches do not match its sampler",
                  file=sys.stderr)
            self._active = False
            return
        logits = outputs.detach()
        pred = logits.argmax(-1)
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        flags = (pred == target).to(torch.uint8) * TOP1 + (top == target[:, None]).any(-1).to(torch.uint8) * TOP5
        self._parts.append((torch.as_tensor(list(indices)), pred, flags))

    def _gathered(self, trainer: Trainer) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """This epoch's examples from every rank, on rank 0 (None elsewhere, and when there are none)."""
        mine = None
        if self._active and self._parts:
            mine = tuple(torch.cat([p[i] for p in self._parts]).cpu().numpy() for i in range(3))
        self._parts = []
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
            torch.distributed.gather_object(mine, parts, dst=0)
            found = [p for p in parts or [] if p is not None]
            if not trainer.is_global_zero or len(found) != trainer.world_size:
                return None
            return tuple(np.concatenate([p[i] for p in found]) for i in range(3))  # type: ignore[return-value]
        return mine

    # -- validation during fit ---------------------------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = False
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._start(trainer, trainer.val_dataloaders)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch, dataloader_idx)

    # The *_end hook, not *_epoch_end: Lightning folds the epoch's val/acc1 into callback_metrics between the two.
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        found = self._gathered(trainer)
        if found is None:
            return
        index, pred, flags = found
        root, epoch = trainer.default_root_dir, trainer.current_epoch
        save_evidence(evidence_path(root, "val_final"), index, pred, flags, epoch, "val")
        # The same value result.json calls the best val/acc1, so both name the same epoch.
        logged = trainer.callback_metrics.get("val/acc1")
        acc = float(logged) if logged is not None else float(np.mean(flags & TOP1))
        if math.isfinite(acc) and (self.best is None or acc > self.best):
            self.best = acc
            save_evidence(evidence_path(root, "val_best"), index, pred, flags, epoch, "val")

    # -- test --------------------------------------------------------------------------------------------------------

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start(trainer, trainer.test_dataloaders)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch, dataloader_idx)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        found = self._gathered(trainer)
        if found is not None:
            save_evidence(evidence_path(trainer.default_root_dir, "test"), *found, trainer.current_epoch, "test")


def _index_batches(loader: Any) -> Iterator[list[int]] | None:
    """The dataset indices of each batch, in the order the loader yields them; None where they cannot be known (an
    iterable dataset, or a sampler that draws at random, whose second pass would differ from the first)."""
    dataset = getattr(loader, "dataset", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if dataset is None or batch_sampler is None or isinstance(dataset, IterableDataset):
        return None
    sampler = getattr(batch_sampler, "sampler", None)
    if isinstance(sampler, RandomSampler) or getattr(sampler, "shuffle", False):
        return None
    return iter(batch_sampler)
