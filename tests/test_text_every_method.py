"""Every domain-adaptation and domain-generalisation method runs on the text task, or says in one line why
it cannot: the grid's methods act on pooled features, so text costs no method-specific code."""

from __future__ import annotations

import math

import pytest
from helpers import CONF_DIR
from test_text_runs import text_root, text_run  # noqa: F401 (a fixture)

from tlbench.errors import ConfigError
from tlbench.train import train

METHODS = sorted(p.stem for p in (CONF_DIR / "adapt").glob("*.yaml"))
SHIFT = ["data=debian_synopsis_to_description", "freeze=linear_probe", "head.bottleneck=16"]


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("fixmatch", "shot")])
def test_every_method_runs_on_the_text_shift(method, tmp_path, text_root, mlflow_uri):  # noqa: F811
    metrics = train(text_run(tmp_path, text_root, mlflow_uri, [*SHIFT, f"adapt={method}"]))
    assert math.isfinite(metrics["test/target_loss"]) and 0.0 <= metrics["test/target_acc"] <= 1.0


def test_shot_adapts_a_text_source_model_found_by_method_name(tmp_path, text_root, mlflow_uri):  # noqa: F811
    source = train(text_run(tmp_path, text_root, mlflow_uri, [*SHIFT, "adapt=source_only"]))
    shot = text_run(tmp_path, text_root, mlflow_uri, [*SHIFT, "adapt=shot", "adapt.source_model=source_only", "selection=last"])
    metrics = train(shot)
    assert metrics["run_id"] != source["run_id"] and math.isfinite(metrics["test/target_loss"])


def test_fixmatch_on_text_says_it_needs_image_augmentations(tmp_path, text_root, mlflow_uri):  # noqa: F811
    with pytest.raises(ConfigError, match="augmentations are for images and this batch holds texts"):
        train(text_run(tmp_path, text_root, mlflow_uri, [*SHIFT, "adapt=fixmatch"]))
