"""DAN (Long et al. 2015): minimise the multi-kernel MMD between source and target features, a
kernel two-sample distance that is zero iff the distributions match (for characteristic kernels).

Uses the full quadratic-time estimate over the batch (batches are small, and it has lower variance
than the linear-time one); biased V-statistic by default, `unbiased: true` for the U-statistic."""

from dataclasses import dataclass, field

from . import ADAPTERS
from .base import Adapter, AdaptOutput
from .layers import mk_mmd2


@dataclass
class DANConfig:
    name: str = "dan"
    trade_off: float = 1.0
    #: Warm the weight up from 0 with the DANN ramp 2/(1+e^(−10p))−1 over training progress p, as DANN and CDAN do
    #: (off: the paper); alignment of still-random features can otherwise collapse them before the classifier learns.
    ramp: bool = False
    #: Gaussian bandwidths as multiples of the batch's mean squared pairwise distance.
    kernel_multipliers: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    unbiased: bool = False
    #: paper: the kernels' uniform mixture (mean over kernels). tllib: their sum, as TLlib's MK-MMD
    #: (≈ K× larger, K = number of kernels); pick it to compare trade-offs with TLlib's.
    normalisation: str = "paper"


class DAN(Adapter):
    def __init__(self, cfg: DANConfig):
        super().__init__()
        self.cfg = cfg

    def loss(self, features_s, features_t, logits_s, logits_t, labels_s, progress, step=0):
        mmd2 = mk_mmd2(features_s, features_t, self.cfg.kernel_multipliers, self.cfg.unbiased)
        if self.cfg.normalisation == "tllib":
            mmd2 = mmd2 * len(self.cfg.kernel_multipliers)
        return AdaptOutput(loss=self.weight(progress) * mmd2, logs={"transfer_loss": mmd2.detach()})


@ADAPTERS.register("dan", DANConfig)
def build_dan(cfg: DANConfig, num_classes: int, feature_dim: int) -> Adapter:
    return DAN(cfg)
