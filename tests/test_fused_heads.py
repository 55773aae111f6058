"""Fused head sweeps (tlbench/fused_heads.py): a sweep of heads on the same cached features trains them
together, and every run it records equals the run trained alone — curves, selection, test metrics."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import TINY, tiny_run
from mlflow.tracking import MlflowClient

from tlbench.fused_heads import OptimizerGroup, PointsByRun, RandomStreams, group_key, why_not_fusable
from tlbench.plan import plan_run

#: A linear probe on a frozen small CNN: features cached, so the heads of a sweep can be fused.
PROBE = [*TINY, "freeze=linear_probe", "data.synthetic_size=200", "trainer.limit_train_batches=4", "head.dropout=0.3"]


def _sweep(tmp_path, uri: str, name: str, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "tlbench", "-m", *PROBE, *overrides,
        f"tracking.uri={uri}", f"tracking.experiment={name}", f"checkpoint_dir={tmp_path}/{name}/ckpt",
        f"hydra.sweep.dir={tmp_path}/{name}/sweep",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _children(uri: str, experiment: str) -> dict[tuple, object]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {(r.data.params["adapt.name"], r.data.params["optim.lr"]): r for r in runs if "tlbench.parent" not in r.data.tags}


def _history(client: MlflowClient, run) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics}


@pytest.mark.slow
def test_fused_sweep_records_the_same_runs_as_unfused(tmp_path, mlflow_uri):
    grid = ("adapt=source_only,dann", "optim.lr=3e-3,3e-2")
    fused = _sweep(tmp_path, mlflow_uri, "fused", *grid)
    alone = _sweep(tmp_path, mlflow_uri, "alone", *grid, "trainer.fuse_heads=false")
    assert fused.returncode == 0 and alone.returncode == 0, fused.stderr[-2000:] + alone.stderr[-2000:]
    assert (fused.stdout + fused.stderr).count("fused 2 runs") == 2  # two groups: source_only's heads and DANN's
    client = MlflowClient(mlflow_uri)
    fused_runs, alone_runs = _children(mlflow_uri, "fused"), _children(mlflow_uri, "alone")
    assert sorted(fused_runs) == sorted(alone_runs) and len(fused_runs) == 4
    # the names say what the sweep varies: method, and the learning rate (as Hydra writes the value)
    names = {f"{a} s0 · lr={lr} · linear_probe · small_cnn · digits" for a in ("source_only", "dann") for lr in ("0.003", "0.03")}
    assert {r.info.run_name for r in fused_runs.values()} == names
    for key, run in fused_runs.items():
        other = alone_runs[key]
        assert run.info.status == other.info.status == "FINISHED"
        assert run.data.tags["fused_heads"] == "trained in a group of 2" and "fused_heads" not in other.data.tags
        assert run.data.tags["config_hash"] == other.data.tags["config_hash"] and run.info.run_name == other.info.run_name
        mine, theirs = _history(client, run), _history(client, other)
        assert sorted(mine) == sorted(theirs), key
        assert any(name.startswith("train/") for name in mine) and "val/source_acc" in mine and "test/target_acc" in mine
        for name, points in mine.items():
            assert [step for step, _ in points] == [step for step, _ in theirs[name]], (key, name)
            assert [value for _, value in points] == pytest.approx([value for _, value in theirs[name]], rel=1e-5, abs=1e-6), (key, name)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {a.path for a in client.list_artifacts(other.info.run_id)}
    # the two learning rates really differ: fusing did not give every run the same head
    source_only = [fused_runs[("source_only", lr)].data.metrics["train_epoch/loss"] for lr in ("0.003", "0.03")]
    assert source_only[0] != source_only[1]


@pytest.mark.slow
def test_a_diverging_run_fails_alone_in_its_group(tmp_path, mlflow_uri):
    result = _sweep(tmp_path, mlflow_uri, "diverge", "optim.lr=3e-3,1e12", "head.dropout=0.0")
    assert result.returncode == 1  # one job failed
    runs = _children(mlflow_uri, "diverge")
    assert runs[("source_only", "0.003")].info.status == "FINISHED"
    failed = runs[("source_only", "1000000000000.0")]
    assert failed.info.status == "FAILED" and "non-finite" in failed.data.tags["failure_reason"]
    assert "fused_heads" in failed.data.tags


def test_only_runs_that_train_heads_on_cached_features_fuse(tmp_path, mlflow_uri):
    probe = plan_run(tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe"]))
    assert why_not_fusable(probe, "on") is None
    assert why_not_fusable(probe, "off: trainer.feature_cache=false") == "the backbone's features are not cached"
    switched_off = plan_run(tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe", "trainer.fuse_heads=false"]))
    assert why_not_fusable(switched_off, "on") == "trainer.fuse_heads=false"
    clipped = plan_run(tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe", "trainer.gradient_clip_val=1.0"]))
    assert "clipping" in why_not_fusable(clipped, "on")


def test_groups_share_data_seed_and_schedule_but_not_the_head_recipe(tmp_path, mlflow_uri):
    class Module:
        batch_composition = "source"

    def key(*extra):
        return group_key(plan_run(tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe", *extra])), Module())

    assert key("optim.lr=0.1", "head.hidden=[16]") == key("optim.lr=0.01", "optim.weight_decay=0.1")
    assert key("seed=1") != key()
    assert key("data.synthetic_size=300") != key()
    assert key("trainer.max_epochs=3") != key()


def test_the_optimizer_group_steps_each_run_with_its_own_gradient():
    torch.manual_seed(0)
    heads = [torch.nn.Linear(4, 3) for _ in range(2)]
    twins = [torch.nn.Linear(4, 3) for _ in range(2)]
    for head, twin in zip(heads, twins):
        twin.load_state_dict(head.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    group = OptimizerGroup([torch.optim.AdamW(h.parameters(), lr=lr) for h, lr in zip(heads, (0.1, 0.01))])
    group.zero_grad()

    def closure():
        loss = sum(torch.nn.functional.cross_entropy(h(x), y) for h in heads)
        loss.backward()
        return loss

    group.step(closure)
    for twin, lr, head in zip(twins, (0.1, 0.01), heads):  # each alone, its own loss
        optimizer = torch.optim.AdamW(twin.parameters(), lr=lr)
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        optimizer.step()
        assert torch.allclose(twin.weight, head.weight, atol=1e-7)
    assert [g["lr"] for g in group.param_groups] == [0.1, 0.01]


def test_each_run_draws_its_own_random_numbers():
    streams = RandomStreams(2)
    for index in range(2):
        torch.manual_seed(7)
        streams.seeded(index)
    with streams.of(0):
        first = torch.rand(3)
    with streams.of(0):
        after_first = torch.rand(3)
    with streams.of(1):  # untouched by run 0's draws: the same numbers run 0 drew first
        assert torch.equal(torch.rand(3), first)
    assert not torch.equal(first, after_first)


def test_metrics_are_split_into_each_runs_points_under_its_own_names():
    logger = PointsByRun(2)
    logger.log_metrics({"run0/val/source_acc": 0.5, "run1/val/source_acc": 0.7, "run1/train/loss": 1.0, "epoch": 3}, step=12)
    # Lightning's epoch index 3 is the fourth epoch, recorded as its number
    assert [(points, step) for points, step, _ in logger.points[0]] == [({"val/source_acc": 0.5, "epoch": 4}, 12)]
    assert logger.points[1][0][0] == {"val/source_acc": 0.7, "train/loss": 1.0, "epoch": 4}


def test_a_shared_backbone_leaves_the_random_state_its_own_construction_would(tmp_path, mlflow_uri):
    from tlbench.backbones import BACKBONES
    from tlbench.fused_heads import SharedBackbones

    cfg = plan_run(tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe"])).backbone
    shared = SharedBackbones()
    torch.manual_seed(3)
    first, after_first = shared.build(cfg), torch.rand(4)
    torch.manual_seed(3)
    again, after_again = shared.build(cfg), torch.rand(4)  # reused, not constructed: same random state after
    torch.manual_seed(3)
    alone, after_alone = BACKBONES.build(cfg), torch.rand(4)
    assert again is first and torch.equal(after_again, after_alone) and torch.equal(after_first, after_alone)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), alone.state_dict().values()))
    torch.manual_seed(4)  # another random state: built anew, other weights
    other = shared.build(cfg)
    assert not all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), alone.state_dict().values()))


@pytest.mark.parametrize(
    ("overrides", "fusable"),
    [
        (["freeze=linear_probe"], True),
        (["freeze=full"], False),  # the backbone trains: building it before the sweep would be wasted
        (["freeze=linear_probe", "data.augment=standard"], False),
        (["freeze=linear_probe", "trainer.fuse_heads=false"], False),
        (["freeze=linear_probe", "head.solver=lbfgs"], False),
        (["freeze=linear_probe", "batch_composition=domain_bn"], False),
    ],
)
def test_only_jobs_that_may_fuse_are_built_before_the_sweep(tmp_path, mlflow_uri, overrides, fusable):
    from tlbench.fused_heads import may_fuse

    assert may_fuse(tiny_run(tmp_path, mlflow_uri, overrides)) is fusable


def test_a_fault_of_the_fused_path_leaves_its_runs_to_train_one_by_one(tmp_path, mlflow_uri, monkeypatch, caplog):
    import logging

    from tlbench import fused_heads

    def broken(members):
        raise RuntimeError("a bug in fused training")

    monkeypatch.setattr(fused_heads, "train_group", broken)
    runs = [tiny_run(tmp_path, mlflow_uri, ["freeze=linear_probe", f"optim.lr={lr}"]) for lr in (0.01, 0.1)]
    with caplog.at_level(logging.WARNING, logger="tlbench.fused_heads"):
        assert fused_heads.prepare(runs) == 0
    assert "they train one by one" in caplog.text
    from tlbench.tracking import config_hash

    assert all(fused_heads.take_outcome(config_hash(run)) is None for run in runs)
