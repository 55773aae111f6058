"""A collapsed run: its selected network predicts one class for (nearly) every test image of a split whose
labels are not that one-sided. Its features were driven to a constant (a strong alignment loss on small
batches does this, results/dg_mmd_kernel), so its number says the configuration failed, not that the method
is weak. It is measured on every test split, tagged, and said in one line, so the MLflow UI, the sweep and
the reports can tell a collapse from a poor result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the tag is read by reports, which need not import torch
    import torch

#: Share of a split's test images predicted as one class at or above which a run counts as collapsed
#: (when the split's true labels are less one-sided than that).
COLLAPSE_SHARE = 0.95
#: Run tag: "true" or "false"; its column in run tables and exports.
COLLAPSED_TAG = "collapsed"
COLLAPSED_COLUMN = f"tags.{COLLAPSED_TAG}"


@dataclass
class Collapse:
    #: `test/<split>_top_prediction_share` for each test split: the share of its images given the most
    #: predicted class.
    metrics: dict[str, float] = field(default_factory=dict)
    #: The splits that collapsed, with the class predicted and its share.
    collapsed: list[tuple[str, int, float]] = field(default_factory=list)

    def tags(self) -> dict[str, str]:
        return {COLLAPSED_TAG: str(bool(self.collapsed)).lower()} if self.metrics else {}

    def message(self) -> str | None:
        if not self.collapsed:
            return None
        where = ", ".join(f"class {label} for {100 * share:.0f} % of {split.removeprefix('test/')} test images" for split, label, share in self.collapsed)
        return (
            f"the selected network collapsed: it predicts {where}; its features are (nearly) constant, from an "
            "alignment loss that won (try a smaller adapt.trade_off or more images per domain in a batch) or from too few steps"
        )


def collapse_of(confusions: dict[str, torch.Tensor]) -> Collapse:
    """From each test split's confusion counts (true × predicted), whether the predictions collapsed."""
    found = Collapse()
    for split, counts in confusions.items():
        total = float(counts.sum())
        if total == 0:
            continue
        predicted, true = counts.sum(0), counts.sum(1)
        share = float(predicted.max()) / total
        found.metrics[f"{split}_top_prediction_share"] = share
        if share >= COLLAPSE_SHARE and float(true.max()) / total < COLLAPSE_SHARE:
            found.collapsed.append((split, int(predicted.argmax()), share))
    return found
