"""Transferability estimators against hand computations on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.transferability import h_score, knn_accuracy, leep, logme, nce
from tlbench.transferability.logme import logme_column


def _log_gaussian(y: np.ndarray, cov: np.ndarray) -> float:
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (len(y) * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)))


def test_logme_reaches_the_fixed_point_and_its_evidence_is_the_gaussian_marginal():
    rng = np.random.default_rng(0)
    n, dim = 12, 3
    features = rng.normal(size=(n, dim))
    y = features @ rng.normal(size=dim) + 0.3 * rng.normal(size=n)
    alpha, beta, evidence = logme_column(features, y)
    # MacKay's fixed point, written with explicit matrices instead of the SVD the estimator uses
    precision = alpha * np.eye(dim) + beta * features.T @ features
    m = beta * np.linalg.solve(precision, features.T @ y)
    gamma = dim - alpha * np.trace(np.linalg.inv(precision))
    assert alpha == pytest.approx(gamma / (m @ m), rel=1e-3)
    assert beta == pytest.approx((n - gamma) / np.sum((features @ m - y) ** 2), rel=1e-3)
    # the evidence is log N(y; 0, FFᵀ/α + I/β) per sample ...
    marginal = _log_gaussian(y, features @ features.T / alpha + np.eye(n) / beta)
    assert evidence == pytest.approx(marginal / n, rel=1e-6)
    # ... and (α, β) maximise it: any nearby pair explains y worse
    for da, db in [(1.3, 1), (0.7, 1), (1, 1.3), (1, 0.7)]:
        other = _log_gaussian(y, features @ features.T / (alpha * da) + np.eye(n) / (beta * db))
        assert other < marginal


def test_logme_with_fewer_samples_than_features_fits_exactly():
    # 5 samples, 8 features (as with wide features and 10 labels per class): the 3 zero eigenvalues of
    # FᵀF must each count as log α in the evidence, or it is not the Gaussian marginal
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 8))
    y = rng.normal(size=5)
    alpha, beta, evidence = logme_column(features, y)
    marginal = _log_gaussian(y, features @ features.T / alpha + np.eye(5) / beta)
    assert evidence == pytest.approx(marginal / 5, rel=1e-6)
    for da, db in [(1.3, 1), (0.7, 1), (1, 1.3), (1, 0.7)]:
        assert _log_gaussian(y, features @ features.T / (alpha * da) + np.eye(5) / (beta * db)) < marginal


def test_logme_averages_one_hot_columns_and_prefers_informative_features():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 10)
    informative = np.eye(3)[labels] * 3 + 0.3 * rng.normal(size=(30, 3))
    noise = rng.normal(size=(30, 3))
    expected = np.mean([logme_column(informative, (labels == c).astype(float))[2] for c in range(3)])
    assert logme(informative, labels) == pytest.approx(expected)
    assert logme(informative, labels) > logme(noise, labels)


def test_leep_by_hand():
    # 3 samples, 2 source classes, 2 target classes
    theta = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9]])
    labels = np.array([0, 0, 1])
    # joint P(y, z) = (1/3) Σ θ_z(x_i)[y_i = y]: y=0 → (1.2, 0.8)/3, y=1 → (0.1, 0.9)/3
    # P(z) = (1.3, 1.7)/3;  P(y=0|z) = (12/13, 8/17), P(y=1|z) = (1/13, 9/17)
    p0 = [0.8 * 12 / 13 + 0.2 * 8 / 17, 0.4 * 12 / 13 + 0.6 * 8 / 17]
    p1 = 0.1 * 1 / 13 + 0.9 * 9 / 17
    assert leep(theta, labels) == pytest.approx((np.log(p0[0]) + np.log(p0[1]) + np.log(p1)) / 3)


def test_nce_by_hand():
    # hard source predictions z = (0, 0, 1, 1, 1); labels y = (0, 1, 1, 1, 0)
    theta = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    labels = np.array([0, 1, 1, 1, 0])
    # P(y,z): (0,0)=1/5, (1,0)=1/5, (1,1)=2/5, (0,1)=1/5;  P(y|z=0)=1/2,1/2;  P(y|z=1)=2/3 (y=1), 1/3 (y=0)
    expected = 0.2 * np.log(0.5) * 2 + 0.4 * np.log(2 / 3) + 0.2 * np.log(1 / 3)
    assert nce(theta, labels) == pytest.approx(expected)
    assert nce(np.eye(2)[labels], labels) == pytest.approx(0.0)  # Z determines Y: no uncertainty left


def test_h_score_by_hand():
    features = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0], [6.0, 3.0]])
    labels = np.array([0, 0, 1, 1])
    # cov(f) (biased): mean (3, 2); var x = 5, var y = 1, cov xy = 2
    # E[f|y]: (1,1),(1,1),(5,3),(5,3) → var x = 4, var y = 1, cov xy = 2
    cov_f = np.array([[5.0, 2.0], [2.0, 1.0]])
    cov_between = np.array([[4.0, 2.0], [2.0, 1.0]])
    expected = np.trace(np.linalg.inv(cov_f) @ cov_between)  # = (4·1 − 2·2 − 2·2 + 1·5)/1 = 1
    assert expected == pytest.approx(1.0)
    assert h_score(features, labels, shrink=False) == pytest.approx(expected)
    from sklearn.covariance import ledoit_wolf

    shrunk = ledoit_wolf(features)[0]
    assert h_score(features, labels) == pytest.approx(np.trace(np.linalg.inv(shrunk) @ cov_between))


def test_knn_leave_one_out_by_hand():
    # two tight clusters plus one sample of class 1 sitting in class 0's cluster
    features = np.array([[1, 0.0], [1, 0.1], [1, -0.1], [0, 1.0], [0.1, 1], [1, 0.05]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    # 1-NN (angles): 0 and 1 have the stray sample 5 nearest (wrong), 5 has sample 1 nearest (wrong): 3 of 6
    assert knn_accuracy(features, labels, k=1) == pytest.approx(3 / 6)
    # 3-NN: 0-2 are outvoted to class 0 (right), 3 and 4 see each other + one of 1/5 → class 1 (right),
    # 5 sees 0, 1, 2 → class 0 (wrong): 5 of 6
    assert knn_accuracy(features, labels, k=3) == pytest.approx(5 / 6)
