"""NCE (Tran et al., ICCV 2019): the negative conditional entropy −H(Y | Z) of target labels Y given the
source head's hard predictions Z = argmax θ(x), from empirical counts. 0 when Z determines Y."""

from __future__ import annotations

import numpy as np


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """Σ_{y,z} P(y, z) log P(y | z) over the observed pairs (y_i, argmax_z θ_z(x_i))."""
    labels = np.asarray(labels, dtype=np.int64)
    hard = np.asarray(source_probs).argmax(axis=1)
    pairs, counts = np.unique(np.stack([labels, hard]), axis=1, return_counts=True)
    joint = counts / len(labels)
    per_z = {z: joint[pairs[1] == z].sum() for z in np.unique(pairs[1])}
    return float(np.sum(joint * np.log(joint / np.array([per_z[z] for z in pairs[1]]))))
