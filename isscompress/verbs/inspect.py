"""``inspect``: what a checkpoint is, what it costs, and how its ISS group norms are spread."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.groups import all_unit_norms
from ..io.loading import Checkpoint, as_checkpoint
from ..io.metadata import Metadata
from ..measure.summary import ModelSummary, NormStats, norm_stats, summarize_checkpoint


@dataclass(frozen=True)
class Inspection:
    path: Path | None
    summary: ModelSummary
    norms: tuple[NormStats, ...]
    metadata: Metadata
    equations: str  # what the cells are taken to compute (a state dict alone cannot say)
    ignored: tuple[str, ...] = ()  # entries of a training checkpoint that are not the model's weights

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "cell_equations": self.equations,
            "ignored": list(self.ignored),
            "model": self.summary.to_dict(),
            "group_norms": [stats.to_dict() for stats in self.norms],
            "isscompress_metadata": self.metadata.shown(),
            "file_metadata": self.metadata.foreign,
        }


def inspect(source: Checkpoint | str | os.PathLike, family: str | None = None) -> Inspection:
    """What a checkpoint is, what it costs, and how its ISS group norms are spread."""
    checkpoint = as_checkpoint(source, family)
    norms = all_unit_norms(checkpoint.state, checkpoint.group_sets)
    stats = tuple(norm_stats(name, values) for name, values in norms.items())
    return Inspection(checkpoint.path, summarize_checkpoint(checkpoint), stats, checkpoint.metadata,
                      checkpoint.spec.cell_kind.equations, checkpoint.ignored)
