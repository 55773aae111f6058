"""Adaptation losses and layers checked against independent numpy / hand computations."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from tlbench.adapt.cdan import RandomizedMultilinearMap, certainty_weights, multilinear_map
from tlbench.adapt.coral import coral_loss
from tlbench.adapt.layers import (
    DomainDiscriminator,
    dann_lambda,
    domain_adversarial_loss,
    mk_mmd2,
    prediction_entropy,
    reverse_gradient,
)
from tlbench.adapt.mcc import class_confusion_loss


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p)).sum(axis=1)


# --- gradient reversal and λ schedule ---------------------------------------------------------


@pytest.mark.parametrize("coeff", [1.0, 0.3, 0.0])
def test_gradient_reversal_is_identity_forward_and_flips_scaled_gradient(coeff):
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 3, dtype=torch.float64)
    y = reverse_gradient(x, coeff)
    assert torch.equal(y, x)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=upstream)
    torch.testing.assert_close(grad, -coeff * upstream)


def test_dann_lambda_schedule_values():
    assert dann_lambda(0.0) == pytest.approx(0.0, abs=1e-12)
    assert dann_lambda(0.5) == pytest.approx(0.98661, abs=1e-5)
    assert dann_lambda(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert dann_lambda(1.0, max_value=0.1) == pytest.approx(0.09999092, abs=1e-8)
    assert dann_lambda(0.1, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-0.1)) - 1)


# --- discriminator and adversarial loss -------------------------------------------------------


def test_discriminator_shape_and_batchnorm_option():
    plain = DomainDiscriminator(7, hidden=16)
    assert plain(torch.randn(4, 7)).shape == (4,)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    with_bn = DomainDiscriminator(7, hidden=16, batch_norm=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in with_bn.modules()) == 2


def _identity_discriminator() -> nn.Module:
    linear = nn.Linear(1, 1)
    with torch.no_grad():
        linear.weight.fill_(1.0)
        linear.bias.zero_()
    return nn.Sequential(linear, nn.Flatten(0))


def _softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_domain_adversarial_loss_matches_hand_bce_accuracy_and_reverses_gradient():
    inputs_s = torch.tensor([[2.0], [-1.0]], requires_grad=True)
    inputs_t = torch.tensor([[-3.0], [0.5]], requires_grad=True)
    loss, acc = domain_adversarial_loss(_identity_discriminator(), inputs_s, inputs_t, coeff=0.5)
    # source label 1: −log σ(z) = softplus(−z); target label 0: −log(1 − σ(z)) = softplus(z)
    expected = (_softplus(-2.0) + _softplus(1.0) + _softplus(-3.0) + _softplus(0.5)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)  # right on 2.0 and −3.0, wrong on −1.0 and 0.5
    loss.backward()
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    # d/dz of the mean BCE is (σ(z) − y)/4; the reversal multiplies it by −0.5
    assert inputs_s.grad[0, 0].item() == pytest.approx(-0.5 * (sigmoid(2.0) - 1) / 4, rel=1e-5)
    assert inputs_t.grad[1, 0].item() == pytest.approx(-0.5 * (sigmoid(0.5) - 0) / 4, rel=1e-5)


def test_domain_adversarial_loss_weighted_mean():
    inputs_s = torch.tensor([[2.0], [-1.0]])
    inputs_t = torch.tensor([[-3.0], [0.5]])
    loss, _ = domain_adversarial_loss(_identity_discriminator(), inputs_s, inputs_t, 1.0, torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    expected = (2 * _softplus(-2.0) + _softplus(-3.0) + _softplus(0.5)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# --- CDAN maps and weights --------------------------------------------------------------------


def test_multilinear_map_shape_and_values():
    features = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    probs = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    mapped = multilinear_map(features, probs)
    assert mapped.shape == (2, 6)
    torch.testing.assert_close(mapped[0], torch.tensor([0.25, 0.5, 0.75, 0.75, 1.5, 2.25]))
    torch.testing.assert_close(mapped[1], torch.tensor([0.0, -1.0, 4.0, 0.0, 0.0, 0.0]))


def test_randomized_map_formula_and_inner_product_preservation():
    torch.manual_seed(0)
    f = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=torch.float64)
    g = torch.tensor([[0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    small = RandomizedMultilinearMap(3, 2, 5).double()
    rf, rg = small.proj_features.numpy(), small.proj_probs.numpy()
    expected = (f.numpy() @ rf) * (g.numpy() @ rg) / math.sqrt(5)
    np.testing.assert_allclose(small(f, g).numpy(), expected, rtol=1e-12)
    # E⟨T(f,g), T(f',g')⟩ = ⟨f,f'⟩⟨g,g'⟩ = ⟨f⊗g, f'⊗g'⟩: the randomized map approximates the full one
    big = RandomizedMultilinearMap(3, 2, 200_000).double()
    out = big(f, g)
    full = multilinear_map(f, g)
    np.testing.assert_allclose((out[0] @ out[1]).item(), (full[0] @ full[1]).item(), rtol=0.05)


def test_cdan_e_certainty_weights():
    logits = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, -1.0], [1.0, 2.0, 0.5]])
    raw = 1 + np.exp(-_np_entropy(_softmax(logits)))
    expected = raw / raw.mean()
    np.testing.assert_allclose(certainty_weights(torch.tensor(logits)).numpy(), expected, rtol=1e-10)
    assert expected[0] == pytest.approx(min(expected))  # the uniform prediction gets the lowest weight


# --- DAN (multi-kernel MMD) -------------------------------------------------------------------


def _np_mk_mmd2(x: np.ndarray, y: np.ndarray, multipliers, unbiased: bool) -> float:
    """Direct double sums over example pairs and kernels."""
    joint = np.concatenate([x, y])
    total = len(joint)
    base = sum(((joint[i] - joint[j]) ** 2).sum() for i in range(total) for j in range(total) if i != j)
    base /= total * (total - 1)

    def k(a, b):
        d2 = ((a - b) ** 2).sum()
        return sum(np.exp(-d2 / (m * base)) for m in multipliers) / len(multipliers)

    def mean_k(a, b, skip_diagonal):
        values = [k(a[i], b[j]) for i in range(len(a)) for j in range(len(b)) if not (skip_diagonal and i == j)]
        return sum(values) / len(values)

    return mean_k(x, x, unbiased) + mean_k(y, y, unbiased) - 2 * mean_k(x, y, False)


@pytest.mark.parametrize("unbiased", [False, True])
def test_mk_mmd_matches_double_sum(unbiased):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    y = rng.normal(loc=0.7, scale=1.3, size=(5, 4))
    multipliers = [0.5, 1.0, 2.0]
    got = mk_mmd2(torch.tensor(x), torch.tensor(y), multipliers, unbiased=unbiased).item()
    assert got == pytest.approx(_np_mk_mmd2(x, y, multipliers, unbiased), rel=1e-9)


def test_mk_mmd_biased_is_zero_for_identical_samples_and_grows_with_shift():
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    assert mk_mmd2(x, x.clone(), [1.0]).item() == pytest.approx(0.0, abs=1e-6)
    near = mk_mmd2(x, x + 0.1, [0.5, 1.0, 2.0]).item()
    far = mk_mmd2(x, x + 3.0, [0.5, 1.0, 2.0]).item()
    assert 0 < near < far


def test_fixed_kernel_mmd_is_domainbeds_sum_of_gaussians_and_not_scale_free():
    """DomainBed's kernel, by hand: Σ_γ exp(−γ‖a−b‖²) over γ = 10^-3…10^3, biased means. Scaling the
    features changes it, where the batch-scaled `mk_mmd2` stays put (the difference `dg_mmd.kernel` selects)."""
    from tlbench.adapt.layers import DOMAINBED_GAMMAS, fixed_kernel_mmd2

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 3)), rng.normal(loc=0.4, size=(4, 3))

    def kernel(a, b):
        return sum(math.exp(-g * float(((a - b) ** 2).sum())) for g in DOMAINBED_GAMMAS)

    def mean_k(a, b):
        return np.mean([[kernel(u, v) for v in b] for u in a])

    expected = mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)
    assert fixed_kernel_mmd2(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(expected, rel=1e-9)
    xs, ys = torch.tensor(x), torch.tensor(y)
    assert mk_mmd2(0.1 * xs, 0.1 * ys, [0.5, 1.0]).item() == pytest.approx(mk_mmd2(xs, ys, [0.5, 1.0]).item(), rel=1e-9)
    assert fixed_kernel_mmd2(0.1 * xs, 0.1 * ys).item() < 0.9 * fixed_kernel_mmd2(xs, ys).item()


def test_dg_mmd_uses_the_kernel_its_config_names():
    from tlbench.adapt import ADAPTERS
    from tlbench.adapt.layers import fixed_kernel_mmd2
    from tlbench.adapt.source_alignment import DGMMDConfig

    features = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    domains = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    source_a, source_b = features[:4], features[4:]
    for kernel, expected in (("fixed", fixed_kernel_mmd2(source_a, source_b)), ("batch", mk_mmd2(source_a, source_b, [0.25, 0.5, 1.0, 2.0, 4.0]))):
        adapter = ADAPTERS.build(DGMMDConfig(kernel=kernel, trade_off=2.0), num_classes=3, feature_dim=3)
        out = adapter.loss(features, None, None, None, None, 0.0, domain_index=domains)
        assert out.loss.item() == pytest.approx(2.0 * expected.item(), rel=1e-6), kernel


# --- CORAL ------------------------------------------------------------------------------------


def test_coral_matches_numpy_covariance():
    rng = np.random.default_rng(2)
    xs, xt = rng.normal(size=(10, 4)), rng.normal(scale=2.0, size=(7, 4)) @ rng.normal(size=(4, 4))
    cs, ct = np.cov(xs, rowvar=False), np.cov(xt, rowvar=False)
    expected = ((cs - ct) ** 2).sum() / (4 * 4**2)
    assert coral_loss(torch.tensor(xs), torch.tensor(xt)).item() == pytest.approx(expected, rel=1e-10)
    assert coral_loss(torch.tensor(xs), torch.tensor(xs + 5.0)).item() == pytest.approx(0.0, abs=1e-12)


# --- entropy ----------------------------------------------------------------------------------


def test_prediction_entropy_hand_values():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [-5.0, -5.0], [100.0, -100.0]])
    expected = [math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), math.log(2), 0.0]
    torch.testing.assert_close(prediction_entropy(logits), torch.tensor(expected), atol=1e-6, rtol=1e-6)
    assert prediction_entropy(torch.zeros(1, 5)).item() == pytest.approx(math.log(5), rel=1e-6)


# --- MCC --------------------------------------------------------------------------------------


def _np_mcc(logits: np.ndarray, temperature: float) -> float:
    """Jin et al. 2020, eqs. 1–6, spelled out."""
    y = _softmax(logits / temperature)
    batch, classes = y.shape
    raw = 1 + np.exp(-_np_entropy(y))
    w = np.diag(batch * raw / raw.sum())
    confusion = y.T @ w @ y
    normalised = np.empty_like(confusion)
    for j in range(classes):
        for k in range(classes):
            normalised[j, k] = confusion[j, k] / confusion[:, k].sum()
    off_diagonal = sum(normalised[j, k] for j in range(classes) for k in range(classes) if j != k)
    return off_diagonal / classes


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_matches_formula(temperature):
    logits = np.array([[3.0, 0.5, -1.0], [0.1, 0.2, 0.0], [-2.0, 4.0, 1.0], [1.0, 1.0, 3.0], [0.0, -1.0, 2.0]])
    got = class_confusion_loss(torch.tensor(logits), temperature).item()
    assert got == pytest.approx(_np_mcc(logits, temperature), rel=1e-10)


def test_mcc_hand_limits():
    # uniform predictions: every normalised column is 1/C everywhere → off-diagonal mass (C−1)/C
    assert class_confusion_loss(torch.zeros(6, 4), 2.5).item() == pytest.approx(0.75, rel=1e-6)
    # confident, distinct one-hot predictions: no confusion at all
    confident = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0], [0.0, 0.0, 50.0]])
    assert class_confusion_loss(confident, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_weight_ramps_from_zero_unless_disabled():
    import math

    import torch

    from tlbench.adapt import ADAPTERS

    logits_t = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    p = 1 / (1 + math.exp(-2.0))
    expected_entropy = (-(p * math.log(p) + (1 - p) * math.log(1 - p)) + math.log(2)) / 2
    ramped = ADAPTERS.build({"name": "entropy", "trade_off": 0.5}, num_classes=2, feature_dim=4)
    flat = ADAPTERS.build({"name": "entropy", "trade_off": 0.5, "ramp": False}, num_classes=2, feature_dim=4)
    args = (None, None, torch.zeros(1, 2), logits_t, torch.zeros(1, dtype=torch.long))
    assert ramped.loss(*args, progress=0.0).loss.item() == 0.0
    assert ramped.loss(*args, progress=1.0).loss.item() == pytest.approx(0.5 * 0.9999092 * expected_entropy, rel=1e-5)
    assert flat.loss(*args, progress=0.0).loss.item() == pytest.approx(0.5 * expected_entropy, rel=1e-5)
