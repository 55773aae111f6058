"""Label-free validators: estimates of target accuracy from one evaluation pass, for choosing checkpoints
and hyperparameters when the target labels are missing (the unsupervised-DA setting).

Every function takes what the validation pass already computed — softmax predictions and features of
the target validation images, features and per-example losses of the source validation images — and
never a target label. Higher is better except for DEV/DEVN, which estimate a risk. References:
IM (Shi & Sha 2012; Liang et al. 2020), BNM (Cui et al. 2020), SND (Saito et al. 2021), DEV (You et al.
2019), DEVN and ClassAMI (Musgrave, Belongie & Lim 2022).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F

#: At most this many examples per split feed the validators (the first ones in the fixed evaluation
#: order): SND is quadratic in it, k-means and the DEV discriminator linear.
MAX_EXAMPLES = 4096
SND_TEMPERATURE = 0.05
#: ClassAMI clusters at most this many feature dimensions (PCA), as in the benchmark of Musgrave et al.
CLUSTER_DIMS = 64


#: Results that depend on features alone (the DEV importance weights, ClassAMI's clusters), by content.
#: A frozen backbone gives the same features every epoch and to every head of a fused group; the PCA
#: and the domain classifier behind them cost ~0.4 s per pass at 1,280 dimensions.
_by_features: OrderedDict[str, torch.Tensor] = OrderedDict()
_REMEMBERED = 8


def _remembered(kind: str, tensors: tuple[torch.Tensor, ...], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()`, or its result for the same `kind` of computation on tensors of the same content."""
    digest = hashlib.blake2b(kind.encode(), digest_size=16)
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    key = digest.hexdigest()
    if key in _by_features:
        _by_features.move_to_end(key)
        return _by_features[key]
    result = _by_features[key] = compute()
    if len(_by_features) > _REMEMBERED:
        _by_features.popitem(last=False)
    return result


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)


def information_maximization(probs: torch.Tensor) -> float:
    """Entropy of the mean prediction minus the mean entropy of the predictions: confident and diverse."""
    return float(_entropy(probs.mean(0)) - _entropy(probs).mean())


def batch_nuclear_norm(probs: torch.Tensor) -> float:
    """Nuclear norm of the N × C prediction matrix over N: large when predictions are confident and
    spread over many classes."""
    return float(torch.linalg.svdvals(probs.double()).sum() / probs.shape[0])


def soft_neighbourhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """Mean entropy of each example's softmax-normalised similarities to the others (cosine similarity of
    L2-normalised predictions, self excluded): high when examples sit in dense neighbourhoods."""
    unit = F.normalize(probs.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))
    neighbours = torch.softmax(similarity / temperature, dim=1)
    return float(_entropy(neighbours).mean())


#: L2 strengths tried for the source/target classifier; the one with the lowest held-out log-loss wins
#: (an unregularised classifier separates a few hundred high-dimensional points perfectly and the
#: importance weights explode).
DOMAIN_L2 = (1e-2, 1e-1, 1.0)


def _fit_domain_classifier(features: torch.Tensor, is_target: torch.Tensor, l2: float, steps: int = 30):
    """L2-regularised logistic regression (LBFGS from zero: deterministic; no nn.Linear, whose random
    initialisation would move the run's random stream). Returns x ↦ logit of p(target | x)."""
    weight = torch.zeros(features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(features @ weight + bias, is_target) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return lambda x: (x @ weight + bias).detach()


def _principal_components(points: torch.Tensor, dims: int) -> torch.Tensor:
    """Centred points projected on their top `dims` principal axes (eigh of the d × d covariance: exact,
    no random state)."""
    centred = points - points.mean(0)
    if centred.shape[1] <= dims:
        return centred
    _, axes = torch.linalg.eigh(centred.T @ centred)
    return centred @ axes[:, -dims:]


def importance_weights(source_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """p(target | x) / p(source | x) × N_s / N_t for every source example, from a logistic source/target
    classifier on (standardised, ≤ 64 principal) features. Two-fold cross-fitting: no example's weight
    comes from a classifier that saw it, and the held-out log-loss picks the L2 strength."""
    return _remembered("importance", (source_features, target_features), lambda: _importance_weights(source_features, target_features))


def _importance_weights(source_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    points = _principal_components(torch.cat([source_features, target_features]).double(), CLUSTER_DIMS)
    points = points / points.std(0).clamp_min(1e-6)
    n_source = len(source_features)
    is_target = torch.cat([torch.zeros(n_source), torch.ones(len(target_features))]).double()
    fold = torch.arange(len(points)) % 2
    best_loss, best_logits = float("inf"), None
    for l2 in DOMAIN_L2:
        logits = torch.empty(len(points), dtype=torch.float64)
        for held_out in (0, 1):
            classifier = _fit_domain_classifier(points[fold != held_out], is_target[fold != held_out], l2)
            with torch.no_grad():
                logits[fold == held_out] = classifier(points[fold == held_out])
        loss = float(F.binary_cross_entropy_with_logits(logits, is_target))
        if loss < best_loss:
            best_loss, best_logits = loss, logits
    return best_logits[:n_source].exp() * (n_source / len(target_features))  # odds p_t/p_s = exp(logit)


def dev_risk(weights: torch.Tensor, losses: torch.Tensor) -> float:
    """Importance-weighted source-validation loss with the control variate of Deep Embedded Validation:
    mean(w·l) + η·mean(w) − η, η = −Cov(w·l, w) / Var(w). Lower is better."""
    w, l = weights.double(), losses.double()
    weighted = w * l
    stacked = torch.stack([weighted, w])
    covariance = torch.cov(stacked)[0, 1]
    eta = -covariance / (w.var() + 1e-6)
    return float(weighted.mean() + eta * w.mean() - eta)


def class_ami(probs: torch.Tensor, features: torch.Tensor, seed: int = 0) -> float:
    """Adjusted mutual information between the predicted classes and a k-means clustering (k = number of
    classes) of the features: high when the classifier's decisions follow the features' own clusters."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score
    from threadpoolctl import threadpool_limits

    def clustered() -> torch.Tensor:
        points = _principal_components(features.double(), CLUSTER_DIMS).numpy()
        with threadpool_limits(torch.get_num_threads()), warnings.catch_warnings():  # the run's threads, not every core
            warnings.simplefilter("ignore")  # collapsed features give fewer distinct points than clusters: AMI says so
            return torch.from_numpy(KMeans(n_clusters=probs.shape[1], n_init=1, random_state=seed).fit_predict(points))

    clusters = _remembered(f"kmeans{probs.shape[1]}/{seed}", (features,), clustered)
    return float(adjusted_mutual_info_score(probs.argmax(1).numpy(), clusters.numpy()))


def validator_scores(
    target_probs: torch.Tensor, target_features: torch.Tensor, source_features: torch.Tensor | None = None, source_losses: torch.Tensor | None = None
) -> dict[str, float]:
    """Every validator's value for one evaluation pass, keyed by its metric name (selection.VALIDATOR_METRICS);
    DEV/DEVN only when the run has a source validation split."""
    target_probs, target_features = target_probs[:MAX_EXAMPLES].cpu(), target_features[:MAX_EXAMPLES].cpu()
    scores = {
        "val/target_im": information_maximization(target_probs),
        "val/target_bnm": batch_nuclear_norm(target_probs),
        "val/target_snd": soft_neighbourhood_density(target_probs),
        "val/target_classami": class_ami(target_probs, target_features) if len(target_probs) > target_probs.shape[1] else float("nan"),
    }
    if source_features is not None and source_losses is not None and len(source_features) > 1:
        source_features, source_losses = source_features[:MAX_EXAMPLES].cpu(), source_losses[:MAX_EXAMPLES].cpu()
        weights = importance_weights(source_features, target_features)
        scores["val/dev"] = dev_risk(weights, source_losses)
        scores["val/devn"] = dev_risk(weights / weights.max(), source_losses)
    return scores
