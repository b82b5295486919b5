"""``inspect``: what a checkpoint is, what it costs, and how its ISS group norms are spread."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.groups import all_unit_norms
from ..errors import IsscompressError
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
    readers: dict[str, list[str]] = field(default_factory=dict)  # set -> modules reading its units (traced models)
    left_whole: dict[str, str] = field(default_factory=dict)  # a width not offered as a set -> why (traced models)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "cell_equations": self.equations,
            "ignored": list(self.ignored),
            "model": self.summary.to_dict(),
            "group_norms": [stats.to_dict() for stats in self.norms],
            "readers": self.readers,
            "left_whole": self.left_whole,
            "isscompress_metadata": self.metadata.shown(),
            "file_metadata": self.metadata.foreign,
        }


def inspect(source: Checkpoint | str | os.PathLike, family: str | None = None, *, arch: str | None = None,
            groups: str | os.PathLike | None = None, save_groups: str | os.PathLike | None = None,
            force: bool = False) -> Inspection:
    """What a checkpoint is, what it costs, and how its ISS group norms are spread. ``arch``/``groups`` open a
    user's own model; ``save_groups`` also writes the group sets as a YAML groups file (to review or edit)."""
    checkpoint = as_checkpoint(source, family, arch, groups)
    plan = getattr(checkpoint.spec, "plan", None)  # a user's model: groups in its own tensor names, and their readers
    if save_groups is not None:
        if plan is None:
            raise IsscompressError(f"--save-groups writes a user model's groups in its own tensor names; "
                                   f"{checkpoint.name} is a {checkpoint.family} checkpoint, whose groups its family "
                                   "reads itself (in isscompress's canonical names, not the file's).",
                                   "Leave out --save-groups, or open the model with --arch FILE.py:FACTORY.")
        inputs = tuple(Path(p) for p in (checkpoint.path, groups) if p is not None)
        plan.save(save_groups, force=force, inputs=inputs)
    norms = all_unit_norms(checkpoint.state, checkpoint.group_sets)
    stats = tuple(norm_stats(name, values) for name, values in norms.items())
    readers = {gs.name: plan.readers(gs.name) for gs in checkpoint.group_sets} if plan is not None else {}
    return Inspection(checkpoint.path, summarize_checkpoint(checkpoint), stats, checkpoint.metadata,
                      checkpoint.spec.equations, checkpoint.ignored, readers,
                      dict(plan.left_whole) if plan is not None else {})
