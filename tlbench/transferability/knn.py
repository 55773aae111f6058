"""The cheap baseline the estimators must beat: leave-one-out k-nearest-neighbour accuracy on the
labelled split's frozen features (cosine similarity, majority vote, ties to the nearest)."""

from __future__ import annotations

import numpy as np


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)  # leave the sample itself out
    k = min(k, len(labels) - 1)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    correct = 0
    for i, row in enumerate(neighbours):
        votes = np.bincount(labels[row], minlength=labels.max() + 1)
        winners = np.flatnonzero(votes == votes.max())
        vote = next(labels[j] for j in row if labels[j] in winners)  # a tie goes to the nearest winner
        correct += int(vote == labels[i])
    return correct / len(labels)
