"""MLDG (Li et al. 2018, "Learning to generalize: meta-learning for domain generalization"), first-order as
DomainBed runs it: each step splits the batch's source domains into meta-train (all but one) and meta-test
(one, drawn at random), takes a virtual gradient step on the meta-train risk, θ' = θ − α·∇L_train(θ), and
minimises L_train(θ) + β·L_test(θ'). The gradient through θ' is first order (∇L_test evaluated at θ', the
inner gradient held constant), which is what DomainBed implements. The loss is the whole source objective;
it runs the network itself on the adapted weights (Needs: network) and reads no target batch.

With one source domain in a batch there is nothing to meta-test on and MLDG is ERM for that step.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch.func import functional_call

from . import ADAPTERS
from .base import Adapter, AdaptOutput, Needs


@dataclass
class MLDGConfig:
    needs: ClassVar[Needs] = Needs(target=False, domain_index=True, own_source_loss=True, network=True)
    name: str = "mldg"
    #: β, the weight of the meta-test risk (DomainBed's `mldg_beta`: 1, searched over 10^[-1, 1]).
    trade_off: float = 1.0
    #: α, the virtual step's learning rate (DomainBed uses the run's learning rate; our DG recipes' Adam rate).
    inner_lr: float = 1.0e-3


def meta_split(domains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(meta-train mask, meta-test mask): one domain present in the batch, at random, is meta-test."""
    present = torch.unique(domains)
    held = present[torch.randint(len(present), (1,)).item()]
    return domains != held, domains == held


def mldg_objective(network, inputs, labels, logits, train, test, inner_lr: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_train(θ) + β·L_test(θ'), L_train, L_test) with θ' = θ − α·∇L_train(θ) and the inner gradient held
    constant (first order); `logits` are the network's outputs on `inputs` at θ."""
    train_risk = F.cross_entropy(logits[train], labels[train])
    params = {name: p for name, p in network.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(train_risk, list(params.values()), retain_graph=True, allow_unused=True)
    adapted = {name: p if g is None else p - inner_lr * g.detach() for (name, p), g in zip(params.items(), grads)}
    test_risk = F.cross_entropy(functional_call(network, adapted, (inputs[test],)), labels[test])
    return train_risk + beta * test_risk, train_risk, test_risk


class MLDG(Adapter):
    def __init__(self, cfg: MLDGConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0, domain_index=None, inputs_s=None, network=None):
        train, test = meta_split(domain_index)
        if not train.any():  # one domain only: plain ERM this step
            risk = F.cross_entropy(logits_s, labels_s)
            return AdaptOutput(loss=risk, logs={"meta_test_risk": risk.new_zeros(())})
        objective, _, test_risk = mldg_objective(network, inputs_s, labels_s, logits_s, train, test, self.cfg.inner_lr, self.cfg.trade_off)
        return AdaptOutput(loss=objective, logs={"meta_test_risk": test_risk.detach()})


@ADAPTERS.register("mldg", MLDGConfig)
def build_mldg(cfg: MLDGConfig, num_classes: int, feature_dim: int) -> Adapter:
    return MLDG(cfg)
