"""Label-free validators: each against a hand/numpy computation, the DEV weights on data whose shift is
known, and the validators as selection rules of a real run (logged per epoch, checkpointed on, refused
where they cannot work)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_run
from mlflow.tracking import MlflowClient

from tlbench import validators as V
from tlbench.errors import ConfigError
from tlbench.selection import RULES

VALIDATOR_RULES = ("im", "bnm", "snd", "dev", "devn", "classami")
PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]], dtype=torch.float64)


def _np_entropy(p):
    return -(p * np.log(p)).sum(-1)


def test_information_maximisation_is_entropy_of_the_mean_minus_mean_entropy():
    p = PROBS.numpy()
    expected = _np_entropy(p.mean(0)) - _np_entropy(p).mean()
    assert V.information_maximization(PROBS) == pytest.approx(expected, rel=1e-9)
    one_hot = torch.eye(3, dtype=torch.float64)  # confident and diverse: the maximum, ln 3
    assert V.information_maximization(one_hot) == pytest.approx(np.log(3), abs=1e-6)
    assert V.information_maximization(torch.full((4, 3), 1 / 3, dtype=torch.float64)) == pytest.approx(0, abs=1e-9)


def test_batch_nuclear_norm_is_the_sum_of_singular_values_over_n():
    expected = np.linalg.svd(PROBS.numpy(), compute_uv=False).sum() / 4
    assert V.batch_nuclear_norm(PROBS) == pytest.approx(expected, rel=1e-9)
    collapsed = torch.tensor([[1.0, 0, 0]] * 3, dtype=torch.float64)  # one class for everyone: rank 1
    assert V.batch_nuclear_norm(torch.eye(3, dtype=torch.float64)) > V.batch_nuclear_norm(collapsed)


def test_soft_neighbourhood_density_matches_a_loop_by_hand():
    p = PROBS.numpy()
    unit = p / np.linalg.norm(p, axis=1, keepdims=True)
    entropies = []
    for i in range(len(p)):
        sims = np.array([unit[i] @ unit[j] for j in range(len(p)) if j != i]) / 0.05
        soft = np.exp(sims - sims.max())
        soft /= soft.sum()
        entropies.append(_np_entropy(soft))
    assert V.soft_neighbourhood_density(PROBS) == pytest.approx(np.mean(entropies), rel=1e-9)


def test_dev_risk_matches_the_control_variate_formula_by_hand():
    rng = np.random.default_rng(0)
    w, l = rng.uniform(0.2, 3, 50), rng.uniform(0, 2, 50)
    eta = -np.cov(w * l, w)[0, 1] / (np.var(w, ddof=1) + 1e-6)
    expected = np.mean(w * l) + eta * np.mean(w) - eta
    assert V.dev_risk(torch.from_numpy(w), torch.from_numpy(l)) == pytest.approx(expected, rel=1e-9)
    ones = torch.ones(50, dtype=torch.float64)  # no shift: the plain mean loss
    assert V.dev_risk(ones, torch.from_numpy(l)) == pytest.approx(l.mean(), rel=1e-6)


def test_importance_weights_are_flat_without_shift_and_follow_the_target_with_it():
    generator = torch.Generator().manual_seed(0)
    source, target = torch.randn(300, 40, generator=generator), torch.randn(300, 40, generator=generator)
    same = V.importance_weights(source, target)
    assert same.shape == (300,) and abs(float(same.mean()) - 1) < 0.1 and float(same.std()) < 0.3
    # shift the target along the first axis: source examples lying that way look more like the target
    shifted = V.importance_weights(source, target + torch.tensor([1.5] + [0.0] * 39))
    correlation = np.corrcoef(source[:, 0].numpy(), np.log(shifted.numpy()))[0, 1]  # log-odds: linear in x
    assert correlation > 0.7
    before = torch.get_rng_state()
    V.importance_weights(source, target)
    assert torch.equal(before, torch.get_rng_state())  # validators leave the run's randomness alone


def test_class_ami_is_one_when_predictions_follow_the_clusters_and_near_zero_when_they_do_not():
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 20
    blob = torch.arange(200) % 4
    features = centres[blob] + torch.randn(200, 4, generator=generator)
    following = torch.nn.functional.one_hot(blob, 4).double()
    assert V.class_ami(following, features) == pytest.approx(1.0, abs=1e-9)
    unrelated = torch.nn.functional.one_hot(torch.randint(0, 4, (200,), generator=generator), 4).double()
    assert abs(V.class_ami(unrelated, features)) < 0.05


def test_validators_are_label_free_rules_and_dev_needs_a_source_split():
    for name in VALIDATOR_RULES:
        assert not RULES[name].uses_target_labels and RULES[name].metric
    assert {n for n in VALIDATOR_RULES if RULES[n].reads_source} == {"dev", "devn"}
    scores = V.validator_scores(PROBS.float(), torch.randn(4, 5))  # a source-free run: no DEV
    assert set(scores) == {"val/target_im", "val/target_bnm", "val/target_snd", "val/target_classami"}


@pytest.mark.parametrize("rule", ["im", "dev"])
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_a_run_logs_every_validator_each_epoch_and_checkpoints_on_the_chosen_one(rule, tmp_path, mlflow_uri):
    from tlbench.train import train

    run = tiny_run(tmp_path, mlflow_uri, ["adapt=dann", f"selection={rule}", "trainer.max_epochs=3"])
    result = train(run)
    client = MlflowClient(mlflow_uri)
    histories = {
        RULES[n].metric: [m.value for m in sorted(client.get_metric_history(result["run_id"], RULES[n].metric), key=lambda m: m.step)] for n in VALIDATOR_RULES
    }
    assert all(len(values) == 3 and np.isfinite(values).all() for values in histories.values()), histories
    values = histories[RULES[rule].metric]
    best = int(np.argmax(values) if RULES[rule].mode == "max" else np.argmin(values))
    assert result["selected_epoch"] == best + 1  # the epoch's number


def test_source_free_runs_refuse_a_validator_that_reads_the_source_split(tmp_path, mlflow_uri):
    from tlbench.train import train

    run = tiny_run(tmp_path, mlflow_uri, ["adapt=shot", "adapt.source_model=runs:/0123456789abcdef0123456789abcdef", "selection=dev"])
    with pytest.raises(ConfigError, match="selection=dev: adapt=shot is source-free.*im"):
        train(run)


# ------------------------------------------------------------- benchmark
def test_weighted_spearman_is_one_for_the_same_order_minus_one_reversed_and_weights_the_top():
    from tlbench.report.validator_benchmark import weighted_spearman

    acc = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert weighted_spearman(acc * 7 + 1, acc) == pytest.approx(1.0)
    assert weighted_spearman(-acc, acc) == pytest.approx(-1.0)
    # by hand: ranks (1..5), weights (r/5)², weighted Pearson of the two rank vectors
    scores = np.array([2.0, 1.0, 3.0, 5.0, 4.0])
    rs, ra = np.array([2, 1, 3, 5, 4.0]), np.arange(1, 6.0)
    w = (ra / 5) ** 2
    w /= w.sum()
    cov = (w * (rs - (w * rs).sum()) * (ra - (w * ra).sum())).sum()
    expected = cov / np.sqrt((w * (rs - (w * rs).sum()) ** 2).sum() * (w * (ra - (w * ra).sum()) ** 2).sum())
    assert weighted_spearman(scores, acc) == pytest.approx(expected)
    # a swap among the best checkpoints costs more than the same swap among the worst
    top_swapped, bottom_swapped = np.array([1, 2, 3, 5, 4.0]), np.array([2, 1, 3, 4, 5.0])
    assert weighted_spearman(top_swapped, acc) < weighted_spearman(bottom_swapped, acc)


def test_regrets_of_a_rule_on_two_trials_by_hand():
    import pandas as pd

    from tlbench.report.validator_benchmark import rule_scores

    frame = pd.DataFrame(
        {
            "run_id": ["a"] * 3 + ["b"] * 3,
            "arm": "dann",
            "epoch": [0, 1, 2] * 2,
            "target_acc": [0.50, 0.70, 0.60, 0.40, 0.45, 0.80],
            "val/target_im": [0.1, 0.3, 0.2, 0.5, 0.9, 0.4],  # picks epoch 1 in a (0.70, best), epoch 1 in b (0.45; best 0.80)
        }
    )
    scores = rule_scores(frame, "im")
    assert scores["checkpoint_regret"] == pytest.approx(100 * (0 + 0.35) / 2)
    # the trial whose chosen checkpoint scores best is b (0.9): 0.45 against the better trial's 0.70
    assert scores["hp_regret"] == pytest.approx(100 * (0.70 - 0.45))
    assert scores["checkpoints"] == 6


def test_weights_turned_non_finite_by_the_last_step_fail_the_run_before_evaluation(tmp_path):
    from tlbench.api import build, compose

    module, _ = build(compose(["backbone=small_cnn", "data=digits", "data.synthetic_size=200"]))
    module._check_weights_finite()  # healthy weights pass
    with torch.no_grad():
        next(module.head.parameters()).view(-1)[0] = float("nan")
    from tlbench.errors import TrainingError

    with pytest.raises(TrainingError, match=r"non-finite weights \(head\..*training diverged"):
        module._check_weights_finite()


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_committed_validator_tables_rebuild_byte_for_byte_from_the_committed_exports(tmp_path):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("validator_benchmark_script", root / "experiments" / "validators" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.write_tables(script.load_checkpoints(script.task_exports()), tmp_path)
    for name in ("table.md", "table.csv", "per_method.csv", "scatter.png"):
        assert (tmp_path / name).read_bytes() == (root / "results" / "validators" / name).read_bytes(), name


def test_feature_only_results_are_computed_once_per_content(monkeypatch):
    """A frozen backbone gives the same features every epoch (and to every head of a fused sweep): the
    importance weights are then reused, never reused for other features, and equal a fresh computation."""
    calls = []
    real = V._importance_weights
    monkeypatch.setattr(V, "_importance_weights", lambda s, t: calls.append(1) or real(s, t))
    torch.manual_seed(0)
    source, target = torch.randn(40, 8), torch.randn(30, 8) + 1
    first = V.importance_weights(source, target)
    again = V.importance_weights(source.clone(), target.clone())
    assert len(calls) == 1 and torch.equal(first, again)
    moved = V.importance_weights(source, target + 0.5)
    assert len(calls) == 2 and not torch.equal(first, moved)
