"""Transferability estimators: score a pretrained model for a target task from its frozen features (and
its source head's predictions) in seconds, before any fine-tuning. Higher is better for all of them.

FEATURE_ESTIMATORS take (features n×D, labels n); HEAD_ESTIMATORS take (source-class probabilities n×Z,
labels n) and apply only to models that have a source classification head."""

from __future__ import annotations

from .hscore import h_score
from .knn import knn_accuracy
from .leep import leep
from .logme import logme
from .nce import nce

FEATURE_ESTIMATORS = {"logme": logme, "hscore": h_score, "knn": knn_accuracy}
HEAD_ESTIMATORS = {"leep": leep, "nce": nce}
ESTIMATORS = {**FEATURE_ESTIMATORS, **HEAD_ESTIMATORS}

__all__ = ["ESTIMATORS", "FEATURE_ESTIMATORS", "HEAD_ESTIMATORS", "h_score", "knn_accuracy", "leep", "logme", "nce"]
