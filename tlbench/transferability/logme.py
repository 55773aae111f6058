"""LogME (You et al., ICML 2021): how well a linear model on frozen features explains the labels, as the
log marginal likelihood (evidence) of Bayesian linear regression, maximised over its prior precision α
and noise precision β, per sample, averaged over one-hot label columns. No training, no hyperparameters."""

from __future__ import annotations

import numpy as np


def _maximise_evidence(
    u_y: np.ndarray, sigma: np.ndarray, residual_outside: float, n: int, dim: int, max_iter: int = 100, tol: float = 1e-5
) -> tuple[float, float, float]:
    """MacKay's fixed point for one label column, in the eigenbasis of FᵀF. `u_y` = Uᵀy on the eigenvectors
    with eigenvalues `sigma` (the rest of y lies outside F's column space: `residual_outside` = its squared
    norm). Returns (α, β, evidence per sample)."""
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        m_norm2 = float(np.sum((beta * np.sqrt(sigma) * u_y / (alpha + beta * sigma)) ** 2))
        fit_err = float(np.sum((alpha * u_y / (alpha + beta * sigma)) ** 2)) + residual_outside
        new_alpha, new_beta = gamma / max(m_norm2, 1e-12), (n - gamma) / max(fit_err, 1e-12)
        converged = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    m_norm2 = float(np.sum((beta * np.sqrt(sigma) * u_y / (alpha + beta * sigma)) ** 2))
    fit_err = float(np.sum((alpha * u_y / (alpha + beta * sigma)) ** 2)) + residual_outside
    # eigenvalues of FᵀF beyond rank(F) are zero: each adds log(α) to the log-determinant
    log_det = float(np.sum(np.log(alpha + beta * sigma))) + (dim - len(sigma)) * np.log(alpha)
    evidence = (n * np.log(beta) + dim * np.log(alpha) - n * np.log(2 * np.pi) - beta * fit_err - alpha * m_norm2 - log_det) / 2
    return alpha, beta, evidence / n


def logme_column(features: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(α, β, evidence per sample) for one real-valued target column `y`."""
    features = np.asarray(features, dtype=np.float64)
    n, dim = features.shape
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10
    u, sigma = u[:, keep], s[keep] ** 2
    u_y = u.T @ y
    residual_outside = float(y @ y - u_y @ u_y)
    return _maximise_evidence(u_y, sigma, max(residual_outside, 0.0), n, dim)


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the maximised evidence per sample of one-hot(labels) given the features."""
    labels = np.asarray(labels)
    return float(np.mean([logme_column(features, (labels == c).astype(np.float64))[2] for c in np.unique(labels)]))
