"""LEEP (Nguyen et al., ICML 2020): the average log-likelihood of the target labels under a classifier
that maps the source head's predicted class distribution θ(x) to target labels through the empirical
conditional P(y | z) estimated on the same target data. Needs a source classification head."""

from __future__ import annotations

import numpy as np


def empirical_conditional(source_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """P(y | z) (num_classes × Z) from the soft joint P(y, z) = 1/n Σ_i θ_z(x_i)·[y_i = y]."""
    joint = np.zeros((num_classes, source_probs.shape[1]))
    np.add.at(joint, labels, source_probs)
    joint /= len(labels)
    return joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """(1/n) Σ_i log Σ_z P(y_i | z) θ_z(x_i); θ = the source head's softmax (n × Z), labels in 0..C-1."""
    source_probs = np.asarray(source_probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    conditional = empirical_conditional(source_probs, labels, int(labels.max()) + 1)
    predicted = source_probs @ conditional.T  # n × C: the "expected empirical predictor"
    return float(np.mean(np.log(predicted[np.arange(len(labels)), labels])))
