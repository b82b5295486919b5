"""``inspect``: what a checkpoint is, what it costs, and how its ISS group norms are spread."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.groups import all_unit_norms
from ..io.loading import load_checkpoint
from ..measure.summary import ModelSummary, NormStats, norm_stats


@dataclass(frozen=True)
class Inspection:
    path: Path
    summary: ModelSummary
    norms: tuple[NormStats, ...]
    metadata: dict

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "model": self.summary.to_dict(),
            "group_norms": [stats.to_dict() for stats in self.norms],
            "isscompress_metadata": {k: v for k, v in self.metadata.items() if k not in ("kept", "vocabulary")},
        }


def inspect_checkpoint(path: str | os.PathLike, family: str | None = None) -> Inspection:
    checkpoint = load_checkpoint(path, family)
    norms = all_unit_norms(checkpoint.state, checkpoint.group_sets)
    stats = tuple(norm_stats(name, values) for name, values in norms.items())
    summary = checkpoint.summary()
    return Inspection(checkpoint.path, summary, stats, checkpoint.metadata)
