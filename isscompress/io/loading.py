"""Load any supported checkpoint into the canonical layout, and build a runnable model from it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from torch import Tensor

from .files import RawCheckpoint, read_checkpoint, sha256_file
from ..errors import CheckpointError
from .families import detect_family, get_family
from ..core.groups import GroupSet
from ..architectures.stack_module import RecurrentModel, build_model
from ..architectures.stack import LAYER_KEY, ModelSpec, group_sets, infer_spec
from ..measure.summary import ModelSummary, summarize

CANONICAL_KEY = re.compile(r"'(layers\.\d+\.\w+)'")


@dataclass
class Checkpoint:
    """A checkpoint in the canonical layout: where it came from, its architecture and its tensors."""

    path: Path
    family: str  # where the model comes from (word_language_model, ...), kept across shrinking
    layout: str  # the key layout of this file (the family adapter that read it)
    spec: ModelSpec
    state: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)  # our own metadata, when the file has it

    @cached_property
    def group_sets(self) -> tuple[GroupSet, ...]:
        return group_sets(self.spec)

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def dtype(self) -> str:
        return str(next(iter(self.state.values())).dtype).replace("torch.", "")

    def summary(self) -> "ModelSummary":
        return summarize(self.spec, self.family, self.file_bytes, self.layout, self.dtype)

    def model(self, dropout: float = 0.0) -> RecurrentModel:
        """A runnable model sharing this checkpoint's tensors."""
        return build_model(self.spec, self.state, dropout)


def _canonical(raw: RawCheckpoint, family: str | None):
    ours = raw.isscompress_metadata or {}
    if "spec" in ours:  # our own files are unambiguous; an override meant for the source does not apply
        family = "isscompress"
    chosen = get_family(family) if family else detect_family(raw.tensors, str(raw.path))
    canonical = None
    try:
        canonical = chosen.convert(raw)
        spec = infer_spec(canonical.tensors, cell_hint=canonical.cell_hint, tied=canonical.tied)
    except CheckpointError as err:
        sources = canonical.sources if canonical else {}

        def source_name(match: re.Match[str]) -> str:
            key = match[1]
            if key in sources:
                return f"'{sources[key]}'"
            parts = LAYER_KEY.match(key)
            return f"'{chosen.source_key(int(parts[1]), parts[2], parts[3] or '')}'" if parts else f"'{key}'"

        message = CANONICAL_KEY.sub(source_name, err.message)
        raise CheckpointError(f"{raw.path} ({chosen.name} layout): {message}", err.hint) from None
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{raw.path} does not have the {chosen.name} layout (missing {err}).",
                              f"The {chosen.name} family expects: {chosen.expects}.") from None
    return chosen.name, canonical, spec


def load_checkpoint(path: str | os.PathLike, family: str | None = None) -> Checkpoint:
    """Read, recognise and check a checkpoint (``family`` overrides auto-detection)."""
    raw = read_checkpoint(path)
    name, canonical, spec = _canonical(raw, family)
    state = dict(canonical.tensors)
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) > 1:
        raise CheckpointError(f"{raw.path} mixes dtypes {sorted(map(str, dtypes))}.",
                              "Save every weight in one dtype.")
    ours = raw.isscompress_metadata or {}
    origin = ours.get("family", name) if name == "isscompress" else name
    return Checkpoint(raw.path, origin, name, spec, state, ours)


CARRIED_METADATA = ("vocabulary", "recipe", "threshold", "widths_before", "widths_after", "kept")


def derived_metadata(checkpoint: Checkpoint, stage: str, sha256: str) -> dict[str, Any]:
    """Metadata for a file made from ``checkpoint``: what carries over, plus one more lineage step."""
    carried = {k: checkpoint.metadata[k] for k in CARRIED_METADATA if k in checkpoint.metadata}
    step = {"stage": stage, "from": checkpoint.path.name, "sha256": sha256, "family": checkpoint.family}
    return {**carried, "family": checkpoint.family, "source": {"file": checkpoint.path.name, "sha256": sha256},
            "lineage": [*checkpoint.metadata.get("lineage", []), step]}


def load(path: str | os.PathLike, family: str | None = None, dropout: float = 0.0) -> RecurrentModel:
    """A runnable ``nn.Module`` for any supported checkpoint, including shrunk ones."""
    return load_checkpoint(path, family).model(dropout)
