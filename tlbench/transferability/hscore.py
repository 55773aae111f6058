"""H-score (Bao et al., ICIP 2019): tr(cov(f)⁻¹ cov(E[f | y])) — how much of the feature covariance lies
between the class means. With few labels and wide features cov(f) is singular and the plain score is
near C − 1 for any features, so by default cov(f) is shrunk (Ledoit-Wolf), the regularised H-score of
Ibrahim et al. (ICLR 2023); `shrink=False` is Bao et al.'s formula with a pseudo-inverse."""

from __future__ import annotations

import numpy as np


def class_mean_features(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row replaced by the mean feature of its class: E[f | y] per sample."""
    means = np.zeros_like(features)
    for c in np.unique(labels):
        means[labels == c] = features[labels == c].mean(axis=0)
    return means


def h_score(features: np.ndarray, labels: np.ndarray, shrink: bool = True) -> float:
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if shrink:
        from sklearn.covariance import LedoitWolf

        cov_f = LedoitWolf(assume_centered=False).fit(features).covariance_
    else:
        cov_f = np.cov(features, rowvar=False, bias=True)
    cov_between = np.cov(class_mean_features(features, labels), rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_between))
