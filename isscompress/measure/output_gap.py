"""The output gap: how far a shrunk model's outputs are from its original's, without labels.

For a model that has no perplexity here (a user's classifier, tagger, encoder), the report compares the two models'
outputs on the same probe inputs: the distillation divergence, and how often the top-1 answer changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..training.tasks import divergence

AGREEMENT_WARNING = 0.99  # below this share of unchanged top-1 outputs, a report warns
GAP_WARNING = 0.05  # KL in nats per position (or MSE) above which a report warns


@dataclass(frozen=True)
class OutputGap:
    """How far the shrunk model's outputs are from the original's on the probe inputs (a user model's example
    inputs): the label-free measure of a model that has no perplexity here."""

    divergence: float  # KL in nats per position over score outputs (MSE over others); 0 is identical
    agreement: float | None  # share of positions whose top-1 output is the original's; None: no score vectors

    def to_dict(self) -> dict[str, Any]:
        return {"divergence": self.divergence, "top1_agreement": self.agreement}


def compare_outputs(student: list[Tensor], teacher: list[Tensor], loss: str = "kl") -> OutputGap:
    """The distillation gap summed over outputs of equal shape, and the top-1 agreement. Outputs that carry hidden
    features are narrower in a shrunk model and are left out: the model's answers are what is compared."""
    same = total = 0
    for a, b in zip(student, teacher):
        if a.shape == b.shape and a.dim() and a.shape[-1] > 1:
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a[..., 0].numel()
    return OutputGap(float(divergence(student, teacher, 1.0, loss)), same / total if total else None)
