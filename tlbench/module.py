"""TransferModule: backbone → bottleneck → head, trained with source cross-entropy plus the adaptation
method's loss on the bottleneck's features (identity when there is no bottleneck).

How source and target share BatchNorm batches (`batch_composition`) is the module's job and the same
for every method, so a baseline differs from a method only by the method's loss.

The module owns the wiring only: the backbone, schedule, method and data are built elsewhere and
passed in. Per epoch it evaluates source val, target val and target test so that any selection rule
can be applied afterwards; checkpoints are chosen by the rule the config names (source val by default).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from . import validators
from .adapt import Adapter
from .adapt.base import Needs
from .adapt.layers import prediction_entropy
from .backbones import Backbone
from .checkpoint_io import CHECKPOINT_KEY
from .config import OptimConfig
from .domain_bn import batchnorm_domain, split_batchnorm
from .errors import TrainingError
from .freeze import FreezeSchedule
from .optim import build_optimizer, build_scheduler, param_groups
from .selection import HOLDOUT_SPLIT, TEST_SPLITS, VAL_SPLITS

#: L-BFGS iterations per epoch with head.solver=lbfgs (a 10-epoch run: up to 200, validated every 20).
LBFGS_ITERATIONS = 20


class DomainForward(NamedTuple):
    """One training step's forward pass; the source fields are None for a source-free method, the target
    ones when the target is not forwarded, `logits_t_strong` without a strong view."""

    features_s: torch.Tensor | None
    logits_s: torch.Tensor | None
    #: The source batch as the network saw it (augmented, preprocessed).
    inputs_s: torch.Tensor | None
    features_t: torch.Tensor | None
    logits_t: torch.Tensor | None
    logits_t_strong: torch.Tensor | None


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
        bottleneck: nn.Module | None = None,
        batch_composition: str = "joint",
        strong_augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        needs: Needs | None = None,
        head_solver: str = "optimizer",
    ):
        super().__init__()
        #: `optimizer` (optim.*) or `lbfgs`: full-batch L-BFGS logistic regression of a linear head (config.HeadConfig).
        self.head_solver = head_solver
        #: What the method reads and changes, as its run plan declared it (adapt/base.py).
        self.needs = needs or Needs()
        self.backbone = backbone
        self.bottleneck = bottleneck if bottleneck is not None else nn.Identity()
        self.head = head
        self.batch_composition = batch_composition
        if batch_composition == "domain_bn":
            split_batchnorm(self.backbone)
            split_batchnorm(self.bottleneck)
        self.adapter = adapter
        if self.needs.frozen_head:  # e.g. SHOT's source hypothesis: it stays as the source model left it
            head.requires_grad_(False)
        self.schedule = schedule
        schedule.regularizer(backbone)  # L2-SP anchors at the starting weights now, before any checkpoint restore
        self.optim_cfg = optim
        self.num_classes = num_classes
        self.augment = augment
        #: The second, strongly augmented target view for methods that ask for one (FixMatch).
        self.strong_augment = strong_augment
        self.seed = seed
        self.preprocess = backbone.preprocessing
        #: The run config as a plain dict, when the builder sets it (tlbench.build): saved in checkpoints.
        self.run_config: dict | None = None
        self.metrics = nn.ModuleDict()
        for split in VAL_SPLITS + (HOLDOUT_SPLIT,) + TEST_SPLITS:
            key = split.replace("/", "_")
            self.metrics[key + "_acc"] = MulticlassAccuracy(num_classes, average="micro")
            self.metrics[key + "_entropy"] = MeanMetric()
            self.metrics[key + "_loss"] = MeanMetric()
        #: Confusion matrices of the test pass (the selected checkpoint), drawn as run artifacts without
        #: a second inference pass; synced across devices like the other metrics.
        #: Evaluation splits whose metrics this epoch has handed to Lightning already (_evaluate).
        self._logged_splits: set[str] = set()
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_count = 0
        #: This run's own optimizer while it trains in a fused group of heads (fused_heads.py), whose
        #: trainer steps all of the group's; None otherwise.
        self.fused_optimizer = None
        self.confusion = nn.ModuleDict({split.replace("/", "_"): MulticlassConfusionMatrix(num_classes) for split in TEST_SPLITS})

    # ----------------------------------------------------------------- model
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features the classifier and the adaptation loss see (backbone, then bottleneck), of
        already-preprocessed images."""
        return self.bottleneck(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (uint8 or [0,1]) images → logits; what inference users call."""
        return self.head(self.features(self.preprocess(images)))

    # ----------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:  # what load_from_checkpoint rebuilds the model from
            checkpoint[CHECKPOINT_KEY] = {"run": self.run_config, "batch_composition": self.batch_composition}

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path,
        map_location="cpu",
        run_config=None,  # type: ignore[override]
        batch_composition=None,
    ) -> "TransferModule":
        """The model rebuilt from the run config in the checkpoint (or `run_config`) with its weights, in
        eval mode. (Lightning's version would call __init__ with saved arguments; ours are built objects.)"""
        from .restore import module_from_checkpoint

        return module_from_checkpoint(checkpoint_path, run_config, map_location, batch_composition, module_class=cls)

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
        self._train_sums, self._train_count = {}, 0  # this epoch's train_epoch/ means (_record_train_logs)
        # Reseeding per epoch makes a run resumed from an epoch checkpoint draw the same randomness
        # (dropout, augmentation) as an uninterrupted one.
        pl.seed_everything(self.seed * 10_007 + self.current_epoch, verbose=False)
        self.apply_freezing(self.current_epoch)
        if self.adapter.runs_before_epoch and (batches := self._target_batches()) is not None:
            with self._batchnorm_domain("target"):
                self.adapter.before_epoch(self, batches)

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

    def _prepare(self, images: torch.Tensor, augment: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        if augment is not None:
            images = augment(images)
        images = self.preprocess(images)
        if self._channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _batchnorm_domain(self, domain: str):
        """Select `domain`'s BatchNorm copies; nothing to do (and no module walk per batch) without domain_bn."""
        return batchnorm_domain(self, domain) if self.batch_composition == "domain_bn" else nullcontext()

    def _forward_domains(
        self,
        images_s: torch.Tensor | None,
        images_t: torch.Tensor | None,
        images_t_strong: torch.Tensor | None = None,
    ) -> "DomainForward":
        """Features and logits of one training step under the configured batch composition.

        joint: one batch, so BatchNorm normalises both domains (and every target view) with their pooled
        statistics; separate: one pass per domain (and per target view), each normalised by its own batch
        statistics; domain_bn: one pass per domain through that domain's BatchNorm copies; source: the
        target is not forwarded. A method that ignores the target (source_only) still forwards it under
        joint/separate, so its BatchNorm sees exactly what the method's does. `images_s` is None for a
        source-free method; `images_t_strong` is the second target view (FixMatch), strongly augmented here."""
        inputs_s = None if images_s is None else self._prepare(images_s, self.augment)
        if images_t is None or self.batch_composition == "source":
            features_s = self.features(inputs_s)
            return DomainForward(features_s, self.head(features_s), inputs_s, None, None, None)
        inputs_t = [self._prepare(images_t, self.augment)]
        if images_t_strong is not None:
            inputs_t.append(self._prepare(images_t_strong, self.strong_augment))
        if self.batch_composition == "joint":
            batches = ([] if inputs_s is None else [inputs_s]) + inputs_t
            features = list(self.features(torch.cat(batches)).split([len(b) for b in batches]))
            features_s = None if inputs_s is None else features.pop(0)
            features_t = features
        else:
            features_s = None
            if inputs_s is not None:
                with self._batchnorm_domain("source"):
                    features_s = self.features(inputs_s)
            with self._batchnorm_domain("target"):
                features_t = [self.features(x) for x in inputs_t]
        logits_t = [self.head(f) for f in features_t]
        return DomainForward(
            features_s,
            None if features_s is None else self.head(features_s),
            inputs_s,
            features_t[0],
            logits_t[0],
            logits_t[1] if len(logits_t) > 1 else None,
        )

    def training_step(self, batch, batch_idx):
        images_s, labels_s, *domain = batch.get("source", (None, None))
        domain_index = domain[0] if domain else None  # (x, y, domain) for methods that need the domain index
        images_t, target_index = batch.get("target"), None
        if isinstance(images_t, (tuple, list)):  # methods that need positions get (images, index)
            images_t, target_index = images_t
        strong = images_t if self.needs.strong_view else None
        out = self._forward_domains(images_s, images_t, strong)
        extra = {}
        if self.needs.strong_view:
            extra["logits_t_strong"] = out.logits_t_strong
        if self.needs.target_index:
            extra["target_index"] = target_index
        if self.needs.domain_index:
            extra["domain_index"] = domain_index
        if self.needs.network:  # a view over the module's own layers, built per step so nothing registers twice
            extra.update(inputs_s=out.inputs_s, network=nn.Sequential(self.backbone, self.bottleneck, self.head))
        adapted = self.adapter.loss(out.features_s, out.features_t, out.logits_s, out.logits_t, labels_s, self.progress, step=self.global_step, **extra)
        logs = {}
        if images_s is not None:
            ce = F.cross_entropy(out.logits_s, labels_s)
            loss = adapted.loss if self.needs.own_source_loss else ce + adapted.loss
            logs.update({"train/source_ce": ce, "train/source_acc": (out.logits_s.argmax(1) == labels_s).float().mean()})
        else:  # source-free: the method's loss is all there is
            loss = adapted.loss
        regularizer = self.schedule.regularizer(self.backbone)
        if regularizer is not None:
            loss = loss + regularizer
        if self.head_solver == "lbfgs":  # logistic regression's L2 penalty on the weights (not the bias)
            loss = loss + 0.5 * self.optim_cfg.weight_decay * sum(p.pow(2).sum() for n, p in self.head.named_parameters() if n.endswith("weight"))
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at epoch {self.current_epoch + 1}, step {self.global_step} "
                f"(lr={self.optim_cfg.lr}); lower optim.lr or check the data"
            )
        logs["train/loss"] = loss
        logs.update({f"train/{k}": v for k, v in adapted.logs.items()})
        self._record_train_logs(logs, (images_s if images_s is not None else images_t).shape[0])
        return loss

    def _record_train_logs(self, logs: dict[str, torch.Tensor], batch_size: int) -> None:
        """Step values on the steps the logger writes (every `log_every_n_steps`), and batch-weighted epoch
        means (`train_epoch/…`, the learning curves of every reproduction) summed here and logged once at the
        epoch's end. Handing every key to Lightning on every step cost ~6 ms a step in its result
        bookkeeping, a quarter of a small network's step."""
        sums = self._train_sums
        for key, value in logs.items():
            value = value.detach()
            sums[key] = sums[key] + value * batch_size if key in sums else value * batch_size
        self._train_count += batch_size
        if self._trainer is None or (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            if self._trainer is not None and self.trainer.optimizers:
                logs["train/head_lr"] = logs["train/loss"].new_tensor(self._group_lr("head"))
            self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)

    def on_train_epoch_end(self) -> None:
        if self._train_count:
            means = {key.replace("train/", "train_epoch/"): total / self._train_count for key, total in self._train_sums.items()}
            self.log_dict(means, on_step=False, on_epoch=True)
        self._train_sums, self._train_count = {}, 0

    # ------------------------------------------------------------ evaluation
    def _target_batches(self):
        """The target training images in their fixed order, preprocessed: what the adapter's hooks read."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return None
        return (self.preprocess(images.to(self.device)) for images in datamodule.target_train_in_order())

    def _adapt_before_evaluation(self) -> None:
        if self.needs.evaluation_hook and (batches := self._target_batches()) is not None:
            self.adapter.before_evaluation(self.backbone, batches)

    def on_validation_start(self) -> None:
        self._adapt_before_evaluation()

    def on_validation_epoch_start(self) -> None:
        self._logged_splits.clear()
        self._validator_inputs: dict[str, list] = {"val/source": [], "val/target": []}
        if self.trainer.training or self.trainer.state.fn == "fit":
            self._check_weights_finite()

    def _check_weights_finite(self) -> None:
        """A last optimizer step can turn the weights to NaN/inf after a finite loss; evaluating them would
        record chance accuracy as a FINISHED result, so the run fails here instead. BatchNorm's running
        statistics (buffers) count too: they overflow while the weights stay finite."""
        tensors = [*self.named_parameters(), *((n, b) for n, b in self.named_buffers() if b.is_floating_point())]
        broken = next((name for name, t in tensors if not torch.isfinite(t).all()), None)
        if broken is not None:
            raise TrainingError(
                f"non-finite weights ({broken}) at epoch {self.current_epoch + 1}, step {self.global_step} "
                f"(lr={self.optim_cfg.lr}): training diverged; lower optim.lr or check the data"
            )

    def on_validation_epoch_end(self) -> None:
        """Log every label-free validator (tlbench.validators) of this epoch's target validation pass."""
        kept, self._validator_inputs = self._validator_inputs, None
        if not kept["val/target"]:
            return
        target_features, target_probs = (torch.cat(parts) for parts in zip(*kept["val/target"]))
        if not (torch.isfinite(target_probs).all() and torch.isfinite(target_features).all()):
            raise TrainingError(
                f"non-finite predictions at epoch {self.current_epoch + 1} (lr={self.optim_cfg.lr}): the weights are finite but so "
                "large that the network overflows; training diverged, lower optim.lr"
            )
        source_features = source_losses = None
        if kept["val/source"]:
            source_features, source_losses = (torch.cat(parts) for parts in zip(*kept["val/source"]))
        scores = validators.validator_scores(target_probs, target_features, source_features, source_losses)
        for name, value in scores.items():
            self.log(name, value, on_epoch=True, sync_dist=True)

    def on_test_start(self) -> None:
        self._adapt_before_evaluation()

    def _evaluate(self, split: str, batch) -> None:
        """Update and log accuracy, prediction entropy (label-free) and loss of one evaluation split; keep
        what the label-free validators read (see on_validation_epoch_end)."""
        images, labels = batch
        with self._batchnorm_domain("source" if "source" in split else "target"):
            features = self.features(self.preprocess(images))
            logits = self.head(features)
        key = split.replace("/", "_")
        losses = F.cross_entropy(logits, labels, reduction="none")
        updates = {
            "acc": (logits, labels),
            "entropy": (prediction_entropy(logits),),
            "loss": (losses,),
        }
        kept = getattr(self, "_validator_inputs", None)
        if kept is not None and split in kept and len(kept[split]) * labels.shape[0] < validators.MAX_EXAMPLES:
            # target: predictions and features, never labels; source: features and per-example losses
            second = logits.softmax(1) if split == "val/target" else losses
            kept[split].append((features.detach().flatten(1).float().cpu(), second.detach().float().cpu()))
        first = split not in self._logged_splits
        self._logged_splits.add(split)
        for metric_name, args in updates.items():
            metric = self.metrics[f"{key}_{metric_name}"]
            metric.update(*args)
            if first:  # Lightning computes (and resets) a logged metric at the epoch's end: one log call is enough,
                # and one per batch cost ~1 ms each, most of an evaluation pass over cached features
                self.log(f"{split}_{metric_name}", metric, on_step=False, on_epoch=True, add_dataloader_idx=False, batch_size=labels.shape[0])
        if key in self.confusion:
            self.confusion[key].update(logits.argmax(1), labels)

    def on_test_epoch_start(self) -> None:
        self._logged_splits.clear()
        for matrix in self.confusion.values():
            matrix.reset()
        self._test_confusion: dict[str, torch.Tensor] = {}

    def on_test_epoch_end(self) -> None:
        # Every rank computes (the sync across devices is collective); only rank 0 draws them afterwards.
        self._test_confusion = {
            split: self.confusion[split.replace("/", "_")].compute().cpu() for split in TEST_SPLITS if self.confusion[split.replace("/", "_")].update_count
        }

    def test_confusion(self) -> dict[str, torch.Tensor]:
        """Test split → its confusion matrix (true × predicted counts) from the last test pass."""
        return getattr(self, "_test_confusion", {})

    def _splits(self, kind: str) -> tuple[str, ...]:
        """The evaluation splits in loader order: the datamodule's (a source-free run has no source
        splits), else all of VAL_SPLITS / TEST_SPLITS."""
        default = VAL_SPLITS if kind == "val" else TEST_SPLITS
        return getattr(getattr(self._trainer, "datamodule", None), f"{kind}_splits", default)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._evaluate(self._splits("val")[dataloader_idx], batch)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._evaluate(self._splits("test")[dataloader_idx], batch)

    # ------------------------------------------------------------- optimizer
    def _group_lr(self, name: str) -> float:
        groups = (self.fused_optimizer or self.trainer.optimizers[0]).param_groups
        return next((g["lr"] for g in groups if g.get("name") == name), groups[0]["lr"])

    def configure_optimizers(self):
        if self.head_solver == "lbfgs":  # each epoch is one L-BFGS step: up to LBFGS_ITERATIONS on the full batch
            return torch.optim.LBFGS(
                self.head.parameters(), lr=1.0, max_iter=LBFGS_ITERATIONS, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe"
            )
        stages = self.backbone.stage_parameters()
        cfg = self.optim_cfg
        new_layers = list(self.bottleneck.parameters()) + ([] if self.needs.frozen_head else list(self.head.parameters()))
        groups = param_groups(
            stages,
            [scale * cfg.backbone_lr_scale for scale in self.schedule.stage_lr_scales(len(stages))],
            {"head": (new_layers, cfg.head_lr_scale), "adapter": (list(self.adapter.parameters()), cfg.adapter_lr_scale)},
            cfg.lr,
        )
        optimizer = build_optimizer(cfg, groups)
        scheduler = build_scheduler(cfg, optimizer, int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
