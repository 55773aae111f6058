"""TransferModule: backbone → head, trained with source cross-entropy plus the adaptation method's loss.

The module owns the wiring only: the backbone, schedule, method and data are built elsewhere and
passed in. Per epoch it evaluates source val, target val and target test so that any selection rule
can be applied afterwards; checkpoints are chosen by the rule the config names (source val by default).
"""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .adapt import Adapter
from .adapt.layers import prediction_entropy
from .backbones import Backbone
from .config import OptimConfig
from .errors import TrainingError
from .freeze import FreezeSchedule
from .optim import build_optimizer, build_scheduler, param_groups

#: Evaluation loaders in the order the datamodule returns them, and the metric prefix of each.
VAL_SPLITS = ("val/source", "val/target", "eval/target_test")
TEST_SPLITS = ("test/source", "test/target")
#: Selection rule → (monitored metric, mode).
SELECTION_METRICS = {
    "source_val": ("val/source_acc", "max"),
    "oracle": ("val/target_acc", "max"),
    "target_entropy": ("val/target_entropy", "min"),
}


class TransferModule(pl.LightningModule):
    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        adapter: Adapter,
        schedule: FreezeSchedule,
        optim: OptimConfig,
        num_classes: int,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.adapter = adapter
        self.schedule = schedule
        schedule.regularizer(backbone)  # L2-SP anchors at the starting weights now, before any checkpoint restore
        self.optim_cfg = optim
        self.num_classes = num_classes
        self.augment = augment
        self.seed = seed
        self.preprocess = backbone.preprocessing
        self.metrics = nn.ModuleDict()
        for split in VAL_SPLITS + TEST_SPLITS:
            key = split.replace("/", "_")
            self.metrics[key + "_acc"] = MulticlassAccuracy(num_classes, average="micro")
            self.metrics[key + "_entropy"] = MeanMetric()
            self.metrics[key + "_loss"] = MeanMetric()

    # ----------------------------------------------------------------- model
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of already-preprocessed images."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (uint8 or [0,1]) images → logits; what inference users call."""
        return self.head(self.features(self.preprocess(images)))

    # -------------------------------------------------------------- freezing
    def apply_freezing(self, epoch: int) -> None:
        """Set requires_grad per stage for `epoch` and put BatchNorm of frozen stages in eval mode."""
        stages = self.backbone.stages()
        trainable = self.schedule.trainable_stages(epoch, len(stages))
        freeze_affine = self.schedule.bn_policy == "frozen_affine"
        for index, stage in enumerate(stages):
            stage.requires_grad_(index in trainable)
            for module in stage.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    if freeze_affine:
                        module.requires_grad_(False)
                    freeze_stats = self.schedule.bn_policy != "train" and (index not in trainable or freeze_affine)
                    module.train(self.training and not freeze_stats)  # both ways: an unfrozen stage's BN trains again

    def train(self, mode: bool = True):
        # An explicit .train() must not unfreeze BN. (Lightning restores per-module modes after validation
        # without calling this, so apply_freezing also sets BN back to train mode itself.)
        super().train(mode)
        if mode:
            self.apply_freezing(self.current_epoch if self._trainer is not None else 0)
        return self

    def on_train_epoch_start(self) -> None:
        # Reseeding per epoch makes a run resumed from an epoch checkpoint draw the same randomness
        # (dropout, augmentation) as an uninterrupted one.
        pl.seed_everything(self.seed * 10_007 + self.current_epoch, verbose=False)
        self.apply_freezing(self.current_epoch)

    # -------------------------------------------------------------- training
    @property
    def progress(self) -> float:
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return min(1.0, self.global_step / total)

    @property
    def _channels_last(self) -> bool:
        # NHWC convolutions are faster on CUDA (tensor cores); on CPU the default layout is kept.
        return self.device.type == "cuda"

    def on_fit_start(self) -> None:
        if self._channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def _prepare(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.augment is not None:
            images = self.augment(images)
        images = self.preprocess(images)
        if self._channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def training_step(self, batch, batch_idx):
        images_s, labels_s = batch["source"]
        images_t = batch.get("target") if self.adapter.needs_target else None
        inputs = self._prepare(images_s, train=True)
        if images_t is not None:
            inputs = torch.cat([inputs, self._prepare(images_t, train=True)])
        features = self.features(inputs)
        logits = self.head(features)
        n_s = images_s.shape[0]
        features_s, logits_s = features[:n_s], logits[:n_s]
        features_t = features[n_s:] if images_t is not None else None
        logits_t = logits[n_s:] if images_t is not None else None

        ce = F.cross_entropy(logits_s, labels_s)
        adapted = self.adapter.loss(features_s, features_t, logits_s, logits_t, labels_s, self.progress)
        loss = ce + adapted.loss
        regularizer = self.schedule.regularizer(self.backbone)
        if regularizer is not None:
            loss = loss + regularizer
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at epoch {self.current_epoch}, step {self.global_step} "
                f"(lr={self.optim_cfg.lr}); lower optim.lr or check the data"
            )
        logs = {"train/loss": loss, "train/source_ce": ce, "train/source_acc": (logits_s.argmax(1) == labels_s).float().mean()}
        logs.update({f"train/{k}": v for k, v in adapted.logs.items()})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=n_s)
        return loss

    # ------------------------------------------------------------ evaluation
    def _adapt_before_evaluation(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not self.adapter.changes_backbone_before_evaluation:
            return
        batches = (self.preprocess(images.to(self.device)) for images in datamodule.target_train_dataloader())
        self.adapter.before_evaluation(self.backbone, batches)

    def on_validation_start(self) -> None:
        self._adapt_before_evaluation()

    def on_test_start(self) -> None:
        self._adapt_before_evaluation()

    def _evaluate(self, split: str, batch) -> None:
        """Update and log accuracy, prediction entropy (label-free) and loss of one evaluation split."""
        images, labels = batch
        logits = self.head(self.features(self.preprocess(images)))
        key = split.replace("/", "_")
        updates = {
            "acc": (logits, labels),
            "entropy": (prediction_entropy(logits),),
            "loss": (F.cross_entropy(logits, labels, reduction="none"),),
        }
        for metric_name, args in updates.items():
            metric = self.metrics[f"{key}_{metric_name}"]
            metric.update(*args)
            self.log(f"{split}_{metric_name}", metric, on_step=False, on_epoch=True, add_dataloader_idx=False, batch_size=labels.shape[0])

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._evaluate(VAL_SPLITS[dataloader_idx], batch)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._evaluate(TEST_SPLITS[dataloader_idx], batch)

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        stages = self.backbone.stage_parameters()
        groups = param_groups(
            stages,
            self.schedule.stage_lr_scales(len(stages)),
            {"head": list(self.head.parameters()), "adapter": list(self.adapter.parameters())},
            self.optim_cfg.lr,
        )
        optimizer = build_optimizer(self.optim_cfg, groups)
        scheduler = build_scheduler(self.optim_cfg.scheduler, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
