"""ImageClassifier: the LightningModule that trains any network of the zoo the way the papers did."""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_depth.models import logits_and_aux


class MomentumSGD(torch.optim.SGD):
    """The optimizer every paper of the zoo used: SGD with momentum 0.9 (learning rate 0.1, as for CIFAR ResNets).

    A class rather than a function so that a config that leaves ``model.optimizer`` out still prints and saves as
    ``class_path``/``init_args``.
    """

    def __init__(self, params: Any, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def _num_classes(net: nn.Module) -> int:
    # The classifier is the last Linear of every family; metrics need its width.
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("net has no nn.Linear classifier; pass num_classes to ImageClassifier")
    return linears[-1].out_features


# Every metric ImageClassifier logs, by the command that logs it (train/aux_loss only for networks with auxiliary
# classifiers). An ablation's report metric must be one that fit logs: the driver checks it before anything trains.
LOGGED_METRICS = {
    "fit": ("train/loss", "train/acc1", "train/aux_loss", "train/samples_per_sec", "val/loss", "val/acc1", "val/acc5",
            "val/acc1_best"),
    "test": ("test/loss", "test/acc1", "test/acc5"),
}


class ImageClassifier(LightningModule):
    """Trains an image classifier with cross-entropy, GoogLeNet's auxiliary losses and top-1/top-5 metrics.

    Args:
        net: the network, e.g. ``ResNet(depth=20, stem="cifar", num_classes=10)``.
        optimizer: builds the optimizer from parameter groups; default SGD with momentum 0.9.
        lr_scheduler: builds the learning-rate schedule from the optimizer; default none (constant).
        lr_scheduler_interval: step the schedule every ``"epoch"`` or every ``"step"`` (iteration-based recipes
            such as He et al. 2015's ÷10 at 32k and 48k iterations use ``"step"``).
        lr_scheduler_monitor: metric a ReduceLROnPlateau schedule watches (AlexNet §5: ÷10 when validation error
            stops improving).
        aux_loss_weight: weight of each auxiliary classifier's loss (GoogLeNet §5: 0.3); unused by other nets.
        label_smoothing: cross-entropy label smoothing (not used by the papers; 0 keeps them faithful).
        no_weight_decay_on_norm_and_bias: exempt BatchNorm parameters and biases from weight decay.
        ema_decay: keep an exponential moving average of the weights (timm's ModelEmaV3) and evaluate with it.
        mixup_alpha: timm Mixup alpha (0 = off; the papers did not use it).
        cutmix_alpha: timm CutMix alpha (0 = off).
        channels_last: train in the channels_last memory format (faster convolutions on GPUs and bf16 CPUs).
        compile: run the network through ``torch.compile``.
        num_classes: number of classes for the metrics; default: the net's last Linear layer.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = MomentumSGD,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        lr_scheduler_monitor: str = "val/loss",
        aux_loss_weight: float = 0.3,
        label_smoothing: float = 0.0,
        no_weight_decay_on_norm_and_bias: bool = False,
        ema_decay: float | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} is outside [0, 1)")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay={ema_decay} is outside (0, 1)")
        if aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight={aux_loss_weight} must be >= 0")
        self.save_hyperparameters(ignore=["net", "optimizer", "lr_scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.num_classes = num_classes or _num_classes(net)
        top5 = min(5, self.num_classes)
        self.train_acc1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(self.num_classes, top_k=top5, average="micro")
        self.test_acc1 = MulticlassAccuracy(self.num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(self.num_classes, top_k=top5, average="micro")
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_acc1_best = MaxMetric()
        self.ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(net, decay=ema_decay)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=self.num_classes,
            )
        self._forward = self.net
        self._epoch_start = 0.0
        self._epoch_samples = 0

    # -- model -------------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and self._forward is self.net:
            # Compile a wrapper, not the module itself, so checkpoints keep the plain parameter names.
            self._forward = torch.compile(self.net)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the network in eval mode (or the EMA weights when ``ema_decay`` is set)."""
        net = self.ema.module if self.ema is not None and not self.training else self._forward
        if x.dim() == 5:  # ten-crop evaluation: (batch, crops, C, H, W) → average the logits over crops
            b, n = x.shape[:2]
            logits = logits_and_aux(net(self._prepare(x.flatten(0, 1)))).logits
            return logits.view(b, n, -1).mean(1)
        return logits_and_aux(net(self._prepare(x))).logits

    def _prepare(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    # -- steps -------------------------------------------------------------------------------------------------------

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.dim() == 2:  # soft targets from mixup/cutmix (label smoothing already folded in)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        hard = y
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        logits, aux = logits_and_aux(self._forward(self._prepare(x)))
        loss = self._loss(logits, y)
        if aux:
            aux_loss = sum(self._loss(a, y) for a in aux)
            loss = loss + self.hparams.aux_loss_weight * aux_loss
            self.log("train/aux_loss", aux_loss, on_step=False, on_epoch=True)
        self.train_acc1.update(logits.detach(), hard)  # update, not forward: no per-step compute
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True, prog_bar=True)
        self._epoch_samples += x.size(0)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net, step=self.global_step)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_samples = 0

    def on_train_epoch_end(self) -> None:
        # Per-epoch throughput costs nothing per step (no device synchronisation inside the loop).
        elapsed = time.perf_counter() - self._epoch_start
        if elapsed > 0 and self._epoch_samples:
            self.log("train/samples_per_sec", self._epoch_samples / elapsed, sync_dist=True, reduce_fx="sum")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Returns the logits, for callbacks that keep per-example evidence (Lightning does not accumulate them)."""
        x, y = batch
        logits = self(x)
        self.val_loss.update(F.cross_entropy(logits, y))
        self.val_acc1.update(logits, y)
        self.val_acc5.update(logits, y)
        self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
        self.log("val/acc1", self.val_acc1, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_epoch=True)
        return logits

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc1_best(self.val_acc1.compute())
        self.log("val/acc1_best", self.val_acc1_best.compute(), prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        self.test_loss.update(F.cross_entropy(logits, y))
        self.test_acc1.update(logits, y)
        self.test_acc5.update(logits, y)
        self.log("test/loss", self.test_loss, on_epoch=True)
        self.log("test/acc1", self.test_acc1, on_epoch=True)
        self.log("test/acc5", self.test_acc5, on_epoch=True)
        return logits

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(-1)

    # -- optimisation ------------------------------------------------------------------------------------------------

    def _param_groups(self) -> list[dict[str, Any]]:
        if not self.hparams.no_weight_decay_on_norm_and_bias:
            return [{"params": [p for p in self.net.parameters() if p.requires_grad]}]
        decay, no_decay = [], []
        for module in self.net.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
                (no_decay if norm or name == "bias" else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self._param_groups())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": self.hparams.lr_scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.lr_scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": config}
