"""Drift guard: a fixed short protocol on the embedded digits task, compared with the numbers committed in
tests/drift_guard.json. A dependency upgrade, a data-generation change or a recipe change that moves the
committed studies' numbers shows up here, in CI, instead of silently in the next table.

Data fingerprints must match exactly (they name the images); accuracies within TOLERANCE points (the
exact digits vary a little across CPUs). After an intended change, rewrite the reference and commit it:

    TLBENCH_WRITE_DRIFT_GUARD=1 .venv/bin/python -m pytest tests/test_drift_guard.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import compose
from mlflow.tracking import MlflowClient

from tlbench.config import validate
from tlbench.train import train

REFERENCE = Path(__file__).with_name("drift_guard.json")
TOLERANCE = 3.0  # accuracy points

#: The committed DA studies' recipe (experiment=da_digits), cut to 300 optimizer steps on one thread.
PROTOCOL = [
    "experiment=da_digits",
    "trainer.max_epochs=1",
    "trainer.steps_per_epoch=300",
    "optim.lr=0.04",  # the tuned source-only learning rate (results/fair_da_digits): far from chance in 300 steps
    "trainer.threads=1",
    "tracking.plots=false",
    "seed=0",
]
ARMS = ("source_only", "dann_paper_digits")


def _measure(arm: str, tmp_path: Path, uri: str) -> dict:
    run = validate(compose(PROTOCOL + [f"adapt={arm}", f"tracking.uri={uri}"]))
    run.output_dir, run.checkpoint_dir = str(tmp_path / arm / "out"), str(tmp_path / arm / "ckpt")
    recorded = MlflowClient(uri).get_run(train(run)["run_id"]).data
    return {
        "source_fingerprint": recorded.params["data_summary.source_fingerprint"],
        "target_fingerprint": recorded.params["data_summary.target_fingerprint"],
        "target_test_acc": round(100 * recorded.metrics["test/target_acc"], 2),
        "source_val_acc": round(100 * recorded.metrics["val/source_acc"], 2),
    }


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_the_fixed_protocol_still_gives_the_committed_numbers(arm, tmp_path, mlflow_uri):
    measured = _measure(arm, tmp_path, mlflow_uri)
    if os.environ.get("TLBENCH_WRITE_DRIFT_GUARD"):
        reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
        reference[arm] = measured
        REFERENCE.write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"wrote the reference for {arm}: {measured}")
    expected = json.loads(REFERENCE.read_text())[arm]
    for key in ("source_fingerprint", "target_fingerprint"):
        assert measured[key] == expected[key], f"{arm}: the {key.split('_')[0]} images changed ({expected[key]} → {measured[key]})"
    for key in ("target_test_acc", "source_val_acc"):
        assert abs(measured[key] - expected[key]) <= TOLERANCE, (
            f"{arm}: {key} drifted from the committed {expected[key]:.2f} to {measured[key]:.2f} "
            f"(tolerance {TOLERANCE} points); if the change is intended, rewrite tests/drift_guard.json"
        )
