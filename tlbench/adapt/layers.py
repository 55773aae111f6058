"""Pieces shared by several adaptation methods, kept in one place so each method file stays a loss.

- gradient reversal and Ganin's λ schedule (DANN, CDAN),
- the domain discriminator and its adversarial loss (DANN, CDAN),
- multi-kernel Gaussian MMD (DAN),
- prediction entropy (entropy minimisation, CDAN+E, MCC),
- confidence-thresholded pseudo-labels (pseudo-labelling, FixMatch).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    """Identity on the forward pass; multiplies the incoming gradient by -coeff on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.coeff * grad_output, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Lets one backward pass train the discriminator to separate domains and the backbone to confuse it."""
    return _ReverseGradient.apply(x, float(coeff))


def dann_lambda(progress: float, gamma: float = 10.0, max_value: float = 1.0) -> float:
    """Ganin & Lempitsky's ramp 2/(1+exp(-γp)) − 1, scaled by `max_value`: it starts at 0 so the
    discriminator's early, noisy gradients do not wreck the features, and approaches max_value."""
    return max_value * (2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0)


def ramp_position(progress: float, step: int, ramp_steps: int | None) -> float:
    """Where the λ ramp is: the fraction of training done (the DANN paper), or, with `ramp_steps`,
    optimizer steps / ramp_steps (TLlib: γ = 1, 1,000 steps), which does not depend on the run's length."""
    return progress if ramp_steps is None else step / ramp_steps


class DomainDiscriminator(nn.Module):
    """MLP in → hidden (× `depth`) → 1 logit ("is this example from the source domain?"), or one logit per
    domain with `outputs` > 1 (which of several source domains). TLlib: 1024-1024 (depth 2); the DANN
    paper's MNIST model: one layer of 100 (depth 1)."""

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.5, batch_norm: bool = False, depth: int = 2, outputs: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for width_in in [in_features] + [hidden] * (depth - 1):
            layers.append(nn.Linear(width_in, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden, outputs))
        self.net = nn.Sequential(*layers)
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits.squeeze(-1) if self.outputs == 1 else logits


def domain_adversarial_loss(
    discriminator: nn.Module,
    inputs_s: torch.Tensor,
    inputs_t: torch.Tensor,
    coeff: float,
    weights_s: torch.Tensor | None = None,
    weights_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of the discriminator (source = 1, target = 0) behind a gradient reversal
    layer with coefficient `coeff`. Optional per-example weights give a weighted mean (CDAN+E).
    Returns (loss, domain accuracy); the accuracy near 0.5 means the domains are confused."""
    inputs = reverse_gradient(torch.cat([inputs_s, inputs_t]), coeff)
    domain_logits = discriminator(inputs)
    is_source = torch.cat([inputs_s.new_ones(len(inputs_s)), inputs_t.new_zeros(len(inputs_t))])
    per_example = F.binary_cross_entropy_with_logits(domain_logits, is_source, reduction="none")
    if weights_s is None and weights_t is None:
        loss = per_example.mean()
    else:
        ones_s = inputs_s.new_ones(len(inputs_s))
        ones_t = inputs_t.new_ones(len(inputs_t))
        weights = torch.cat([ones_s if weights_s is None else weights_s, ones_t if weights_t is None else weights_t])
        loss = (weights * per_example).sum() / weights.sum()
    accuracy = ((domain_logits > 0).float() == is_source).float().mean()
    return loss, accuracy.detach()


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example Shannon entropy (nats) of softmax(logits), via log_softmax so it never hits log(0)."""
    log_probs = F.log_softmax(logits, dim=1)
    return -(log_probs.exp() * log_probs).sum(dim=1)


def pairwise_squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖² via the expansion (memory O(N·M), not O(N·M·d)); clamped at 0 against round-off."""
    sq = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * a @ b.T
    return sq.clamp_min(0.0)


def multi_gaussian_kernel(sq_distances: torch.Tensor, bandwidths: Sequence[float | torch.Tensor]) -> torch.Tensor:
    """Uniform mixture of Gaussian kernels: (1/K) Σ_k exp(−d² / γ_k).

    DAN learns the mixture weights β_k by a quadratic program; a uniform mixture over a wide range of
    bandwidths is the usual simplification and keeps the kernel characteristic."""
    return sum(torch.exp(-sq_distances / gamma) for gamma in bandwidths) / len(bandwidths)


def mk_mmd2(x: torch.Tensor, y: torch.Tensor, multipliers: Sequence[float], unbiased: bool = False) -> torch.Tensor:
    """Squared multi-kernel MMD between samples x (n, d) and y (m, d), full quadratic-time estimate.

    Bandwidths are γ_k = multiplier_k · (mean squared distance over distinct pairs of the joint
    sample), so the kernels adapt to the feature scale; the base is detached (a heuristic, not a
    parameter to be optimised). Biased (V-statistic, default): every term is a plain mean over all
    pairs, ≥ 0. Unbiased (U-statistic): the within-sample terms skip i = j; it can be slightly
    negative. The cross term is the same in both."""
    n, m = len(x), len(y)
    joint = torch.cat([x, y])
    sq = pairwise_squared_distances(joint, joint)
    pairs = max((n + m) * (n + m - 1), 1)
    base = (sq.detach().sum() / pairs).clamp_min(1e-12)
    return mmd2_of_kernel(multi_gaussian_kernel(sq, [mult * base for mult in multipliers]), n, unbiased)


#: DomainBed's MMD kernel: Σ_k exp(−γ_k d²) over these fixed γ_k, whatever the feature scale.
DOMAINBED_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def fixed_kernel_mmd2(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = DOMAINBED_GAMMAS) -> torch.Tensor:
    """Squared MMD (biased) with DomainBed's kernel: a sum of Gaussians of fixed precisions γ_k. Unlike
    `mk_mmd2`, its value changes with the feature scale (it falls as the features shrink)."""
    joint = torch.cat([x, y])
    sq = pairwise_squared_distances(joint, joint)
    kernel = multi_gaussian_kernel(sq, [1.0 / gamma for gamma in gammas]) * len(gammas)
    return mmd2_of_kernel(kernel, len(x), unbiased=False)


def mmd2_of_kernel(kernel: torch.Tensor, n: int, unbiased: bool) -> torch.Tensor:
    """Squared MMD from the kernel matrix of the joint sample (its first n rows are x)."""
    m = kernel.shape[0] - n
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    if unbiased:
        within_x = (k_xx.sum() - k_xx.diagonal().sum()) / max(n * (n - 1), 1)
        within_y = (k_yy.sum() - k_yy.diagonal().sum()) / max(m * (m - 1), 1)
    else:
        within_x, within_y = k_xx.mean(), k_yy.mean()
    return within_x + within_y - 2.0 * k_xy.mean()


def confident_pseudo_labels(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax labels, mask of examples whose top softmax probability is ≥ threshold), both without
    gradient: the targets of self-training (pseudo-labelling, FixMatch)."""
    probabilities = logits.detach().softmax(dim=1)
    confidence, labels = probabilities.max(dim=1)
    return labels, (confidence >= threshold).float()


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the whole batch with unmasked terms zeroed (FixMatch's normalisation:
    a batch with few confident examples contributes a small loss, not a large mean over a few)."""
    return (F.cross_entropy(logits, labels, reduction="none") * mask).mean()
