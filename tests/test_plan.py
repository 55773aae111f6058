"""The run plan (tlbench/plan.py) and the method contract's declared needs: what is decided before a run
trains, one store handle per run, and a new stream (the domain index) served from one declaration."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_run

from tlbench.adapt import ADAPTERS
from tlbench.adapt.base import Adapter, needs_of
from tlbench.adapt.vrex import domain_risks
from tlbench.assembly import build_module
from tlbench.data.datamodule import DomainDataModule
from tlbench.module import TransferModule
from tlbench.plan import plan_run
from tlbench.tracking import Store


def test_plan_of_a_plain_run_touches_no_store(tmp_path):
    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/never.db", [])
    plan = plan_run(run)
    assert "client" not in vars(plan.store)  # the bounded client is made on first use only
    assert not (tmp_path / "never.db").exists()
    assert plan.store == Store(f"sqlite:///{tmp_path}/never.db", run.tracking.experiment, run.tracking.timeout_s)
    assert plan.checkpoint_dir.name == plan.config_hash and plan.tags["config_hash"] == plan.config_hash
    assert plan.monitor == "val/source_acc" and plan.monitor_mode == "max"
    assert plan.trainer_arguments["max_epochs"] == run.trainer.max_epochs
    with pytest.raises(AttributeError):  # decided once: a plan is immutable
        plan.run_name = "other"


def test_plan_of_a_scratch_run_builds_the_backbone_without_weights(tmp_path):
    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", ["freeze=scratch", "backbone=efficientnet_lite0", "backbone.weights=imagenet"])
    assert plan_run(run).backbone.weights == "none" and run.backbone.weights == "imagenet"


def test_every_method_that_overrides_a_hook_declares_it():
    """A method's needs are the only place its streams and hooks are read: an evaluation hook that is not
    declared would silently never run."""
    for name in ADAPTERS.choices():
        entry = ADAPTERS.entry(name)
        node = {"name": name, **({"source_model": "runs:/x"} if "source_model" in entry.schema.__dataclass_fields__ else {})}
        adapter = ADAPTERS.build(node, num_classes=3, feature_dim=4)
        overrides = type(adapter).before_evaluation is not Adapter.before_evaluation
        assert needs_of(ADAPTERS.validate(node)).evaluation_hook == overrides, name


def test_vrex_penalty_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    domains = torch.tensor([0, 0, 1, 1])
    ce = [
        torch.log1p(torch.exp(torch.tensor(-2.0))),
        torch.log1p(torch.exp(torch.tensor(1.0))),
        torch.log(torch.tensor(2.0)),
        torch.log1p(torch.exp(torch.tensor(-3.0))),
    ]
    risks = torch.stack([(ce[0] + ce[1]) / 2, (ce[2] + ce[3]) / 2])
    assert torch.allclose(domain_risks(logits, labels, domains), risks)
    adapter = ADAPTERS.build({"name": "vrex", "trade_off": 3.0, "anneal_steps": 10}, num_classes=2, feature_dim=2)
    variance = ((risks - risks.mean()) ** 2).mean()
    late = adapter.loss(None, None, logits, None, labels, 0.5, step=10, domain_index=domains)
    early = adapter.loss(None, None, logits, None, labels, 0.0, step=0, domain_index=domains)
    assert torch.allclose(late.loss, 3.0 * variance) and torch.allclose(early.loss, variance)
    one_domain = adapter.loss(None, None, logits, None, labels, 0.5, step=10, domain_index=torch.zeros(4, dtype=torch.long))
    assert one_domain.loss.item() == 0.0  # one source domain: V-REx is ERM


def first_batch(datamodule):
    batch = next(iter(datamodule.train_dataloader()))
    return batch[0] if isinstance(batch, tuple) else batch


@pytest.mark.slow  # trains
def test_a_method_that_declares_the_domain_index_gets_it_and_nothing_else_does(tmp_path):
    import pytorch_lightning as pl

    run = tiny_run(tmp_path, f"sqlite:///{tmp_path}/m.db", ["adapt=vrex"])
    module, datamodule, _ = build_module(plan_run(run), DomainDataModule(run.data, run.seed, steps_per_epoch=2), TransferModule)
    images, labels, domains = first_batch(datamodule)["source"]
    assert domains.shape == labels.shape and domains.dtype == torch.long and not domains.any()  # one source domain: index 0
    seen = []
    original = module.adapter.loss

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return original(*args, **kwargs)

    module.adapter.loss = spy
    trainer = pl.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)
    assert len(seen) == 2 and all(torch.equal(k["domain_index"], torch.zeros_like(k["domain_index"])) for k in seen)
    plain = tiny_run(tmp_path / "plain", f"sqlite:///{tmp_path}/m.db", ["adapt=dann"])
    plain_data = DomainDataModule(plain.data, plain.seed, steps_per_epoch=2)
    build_module(plan_run(plain), plain_data, TransferModule)
    assert len(first_batch(plain_data)["source"]) == 2  # (x, y): no method pays for a stream it did not declare
