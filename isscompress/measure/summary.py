"""Plain-data descriptions of a model and of its ISS group norms, for reports and JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.architecture import Architecture, LayerInfo, language_model_facts

if TYPE_CHECKING:
    from ..io.loading import Checkpoint

NORM_THRESHOLDS = {"1e-4": 1e-4, "1e-3": 1e-3, "1e-2": 1e-2}
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class ModelSummary:
    family: str
    cell: str
    layers: tuple[LayerInfo, ...]
    vocab_size: int
    tied: bool
    parameters: dict[str, int]
    macs_per_token: dict[str, int]
    file_bytes: int | None = None
    layout: str = ""
    dtype: str = "float32"
    architecture: str = "recurrent_stack"  # the architecture kind: the LM stack, or a user's traced module ("user-model")
    classes: int = 0  # a tagger's labels per token (its decoder's outputs), 0 for a language model

    @property
    def widths(self) -> list[int]:
        return [layer.width for layer in self.layers]

    @property
    def total_parameters(self) -> int:
        return sum(self.parameters.values())

    @property
    def total_macs(self) -> int:
        return sum(self.macs_per_token.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "total_parameters": self.total_parameters, "total_macs_per_token": self.total_macs}


def summarize(
    spec: Architecture, family: str, file_bytes: int | None = None, layout: str = "", dtype: str = "float32"
) -> ModelSummary:
    facts = language_model_facts(spec)
    return ModelSummary(family, spec.cell, spec.layer_info(), facts.vocab_size if facts else 0,
                        bool(facts and facts.tied), spec.parameter_counts(), spec.macs_per_token(), file_bytes,
                        layout or family, dtype, spec.kind, facts.classes if facts else 0)


def summarize_checkpoint(checkpoint: "Checkpoint") -> ModelSummary:
    """The summary of a checkpoint (in memory or read from a file)."""
    return summarize(checkpoint.spec, checkpoint.family, checkpoint.file_bytes, checkpoint.layout, checkpoint.dtype)


@dataclass(frozen=True)
class NormStats:
    """Distribution of one group set's unit norms: quantiles, counts under thresholds, log histogram."""

    name: str
    units: int
    zeros: int  # units whose group is exactly zero (what ISS's proximal step leaves)
    quantiles: dict[str, float]
    under: dict[str, int]
    histogram: list[tuple[float, float, int]]  # (low, high, count) on log-spaced bins; low 0 for exact zeros

    def to_dict(self) -> dict:
        return asdict(self)


def norm_stats(name: str, norms: Tensor, bins: int = 8) -> NormStats:
    norms = norms.double()
    quantiles = {f"q{int(q * 100):02d}": float(torch.quantile(norms, q)) for q in QUANTILES}
    under = {label: int((norms <= t).sum()) for label, t in NORM_THRESHOLDS.items()}
    positive = norms[norms > 0]
    histogram: list[tuple[float, float, int]] = []
    zeros = int((norms == 0).sum())
    if zeros:
        histogram.append((0.0, 0.0, zeros))
    if positive.numel():
        low, high = positive.min().log10(), positive.max().log10()
        edges = torch.logspace(float(low), float(high) + 1e-9, bins + 1, dtype=torch.float64)
        counts = torch.histogram(positive, edges).hist
        histogram += [(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(bins)]
    return NormStats(name, int(norms.numel()), zeros, quantiles, under, histogram)
