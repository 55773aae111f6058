"""`tlbench eval`: a finished run's selected checkpoint re-scored on other data, recorded as its child."""

from __future__ import annotations

import pytest
from helpers import tiny_run
from mlflow.tracking import MlflowClient

from tlbench.evaluate import main as eval_main
from tlbench.train import train


@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_eval_reproduces_the_run_and_scores_a_new_target_as_a_child_run(tmp_path, mlflow_uri, capsys):
    run = tiny_run(tmp_path, mlflow_uri, ["trainer.max_epochs=1"])
    original = train(run)
    client = MlflowClient(mlflow_uri)
    # the same data again: the recorded test numbers, exactly
    assert eval_main([original["run_id"], "--uri", mlflow_uri, "--checkpoint-dir", run.checkpoint_dir]) == 0
    assert f"test/target_acc={original['test/target_acc']:.4f}" in capsys.readouterr().out
    # the source domain as the target: its test split is the one test/source_acc was measured on
    assert eval_main([original["run_id"], "data.target=synthetic_digits", "--uri", mlflow_uri, "--checkpoint-dir", run.checkpoint_dir]) == 0
    children = client.search_runs(
        [client.get_run(original["run_id"]).info.experiment_id], f"tags.eval_of = '{original['run_id']}'", order_by=["attributes.start_time ASC"]
    )
    assert len(children) == 2 and all(c.data.tags["mlflow.parentRunId"] == original["run_id"] for c in children)
    rescored = children[1]
    assert rescored.info.status == "FINISHED" and rescored.data.params["eval.target"] == "synthetic_digits"
    assert rescored.data.metrics["test/target_acc"] == pytest.approx(original["test/source_acc"], abs=1e-6)


def test_eval_refuses_to_change_the_model_in_one_line(tmp_path, mlflow_uri, capsys):
    assert eval_main(["0123456789abcdef", "backbone=lenet", "--uri", mlflow_uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only data.* overrides can change" in err and "backbone=lenet" in err
