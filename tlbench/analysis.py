"""The analysis domain-adaptation papers show for a trained model, computed on its selected checkpoint:
the proxy A-distance between source and target features (Ben-David et al. 2007; reported by Ganin et al.
2016 and Long et al. 2015) and a 2-D t-SNE embedding of both. A DA method that aligns the domains lowers
the A-distance and mixes the two clouds; one that does not, leaves them apart.

Proxy A-distance: a linear classifier (L2 logistic regression on standardised features) learns to tell
the domains apart on one half of the examples, and its error ε on the other half gives 2·(1 − 2ε):
0 when the domains are indistinguishable, 2 when they are separable. At most MAX_PER_DOMAIN test
examples per domain, the same number from each, drawn with a fixed seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MAX_PER_DOMAIN = 1000
#: Examples per domain drawn in the embedding (t-SNE is quadratic in them).
EMBEDDED_PER_DOMAIN = 500


def sample_images(data, count: int, seed: int) -> torch.Tensor:
    """Up to `count` images of a split (in memory or streamed), drawn without replacement."""
    order = np.random.default_rng(seed).permutation(len(data))[:count]
    if hasattr(data, "images"):
        return data.images[torch.as_tensor(order)]
    return torch.stack([torch.as_tensor(data[int(i)][0]) for i in order])


@torch.no_grad()
def features_of(module: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """The features the classifier sees (backbone, then bottleneck) of raw images, in eval mode."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    try:
        parts = [module.features(module.preprocess(images[i : i + batch_size].to(device))).float().cpu() for i in range(0, len(images), batch_size)]
    finally:
        module.train(was_training)
    return torch.cat(parts).numpy()


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    """2·(1 − 2ε) of a held-out linear domain classifier; equal numbers from each domain."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    count = min(len(source), len(target))
    rng = np.random.default_rng(seed)
    x = np.concatenate([source[rng.permutation(len(source))[:count]], target[rng.permutation(len(target))[:count]]])
    y = np.r_[np.zeros(count), np.ones(count)]
    x_fit, x_held, y_fit, y_held = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_fit)
    classifier = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x_fit), y_fit)
    error = float((classifier.predict(scaler.transform(x_held)) != y_held).mean())
    return 2.0 * (1.0 - 2.0 * min(error, 0.5))


def embedding_figure(source: np.ndarray, target: np.ndarray, title: str, seed: int = 0):
    """t-SNE of source (blue) and target (orange) features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    source, target = source[:EMBEDDED_PER_DOMAIN], target[:EMBEDDED_PER_DOMAIN]
    points = TSNE(n_components=2, init="pca", perplexity=min(30, (len(source) + len(target) - 1) // 3), random_state=seed).fit_transform(
        np.concatenate([source, target])
    )
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.scatter(*points[: len(source)].T, s=4, alpha=0.6, label="source")
    axes.scatter(*points[len(source) :].T, s=4, alpha=0.6, label="target")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(markerscale=3)
    axes.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def analyse(module: nn.Module, source_split, target_split, seed: int = 0) -> tuple[dict[str, float], object]:
    """The run's `analysis/a_distance` metric and its embedding figure, on the selected model's features of
    the source and target test splits."""
    source = features_of(module, sample_images(source_split, MAX_PER_DOMAIN, seed))
    target = features_of(module, sample_images(target_split, MAX_PER_DOMAIN, seed + 1))
    distance = proxy_a_distance(source, target, seed)
    return {"analysis/a_distance": distance}, embedding_figure(source, target, f"source vs target test features (proxy A-distance {distance:.2f})", seed)
