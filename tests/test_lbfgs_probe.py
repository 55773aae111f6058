"""head.solver=lbfgs: the linear probe of linear-probe papers (full-batch L-BFGS logistic regression on
cached features) reaches the same classifier as scikit-learn's logistic regression on those features."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
from helpers import tiny_run

from tlbench.assembly import build_module
from tlbench.data.datamodule import DomainDataModule
from tlbench.errors import ConfigError
from tlbench.module import TransferModule
from tlbench.plan import plan_run


def test_lbfgs_probe_matches_scikit_learn_logistic_regression(tmp_path, mlflow_uri):
    from sklearn.linear_model import LogisticRegression

    weight_decay = 0.05
    run = tiny_run(
        tmp_path,
        mlflow_uri,
        ["freeze=linear_probe", "head.solver=lbfgs", f"optim.weight_decay={weight_decay}", "trainer.max_epochs=8", "trainer.limit_train_batches=1.0"],
    )
    pl.seed_everything(0, verbose=False)
    module, datamodule, decision = build_module(plan_run(run), DomainDataModule(run.data, run.seed), TransferModule)
    assert decision == "on"
    trainer = pl.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 8  # one L-BFGS step per epoch: the whole split is one batch

    features, labels = datamodule.source_train.images.numpy(), datamodule.source_train.labels.numpy()
    # sklearn minimises C·Σ CE + ½‖W‖²; we minimise mean CE + (λ/2)‖W‖²: the same optimum when C = 1/(λN)
    reference = LogisticRegression(C=1 / (weight_decay * len(labels)), max_iter=5000, tol=1e-10).fit(features, labels)
    ours = module.head.weight.detach().numpy()
    assert np.linalg.norm(ours - reference.coef_) / np.linalg.norm(reference.coef_) < 0.03  # a wrong L2 scale is off by ~2×

    def objective(weight, bias) -> float:  # what both minimise: mean cross-entropy + (λ/2)‖W‖²
        logits = features @ weight.T + bias
        logits = logits - logits.max(1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return float(-log_probs[np.arange(len(labels)), labels].mean() + 0.5 * weight_decay * (weight**2).sum())

    assert objective(ours, module.head.bias.detach().numpy()) <= objective(reference.coef_, reference.intercept_) + 1e-5


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["head.hidden=[16]"], "linear classifier"),
        (["adapt=dann"], "source labels alone"),
        (["trainer.steps_per_epoch=5"], "one batch per epoch"),
    ],
)
def test_lbfgs_probe_refuses_what_is_not_logistic_regression(tmp_path, mlflow_uri, overrides, says):
    with pytest.raises(ConfigError, match=says):
        tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe", "head.solver=lbfgs", *overrides])


def test_lbfgs_probe_needs_cached_features(tmp_path, mlflow_uri):
    run = tiny_run(tmp_path, mlflow_uri, ["freeze=full", "head.solver=lbfgs"])
    with pytest.raises(ConfigError, match="not cached: some backbone stages train"):
        build_module(plan_run(run), DomainDataModule(run.data, run.seed), TransferModule)
