"""Checkpoint metadata: one typed, versioned record, and everything else kept verbatim.

isscompress writes its own record as one JSON string under the ``isscompress`` key of a
safetensors header. A source file's other header entries (a vocabulary, a licence, a gate
activation) are not ours to interpret: they travel unchanged through every verb, and so do
keys of our own record that a newer isscompress added.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from ..errors import CheckpointError

METADATA_KEY = "isscompress"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Metadata:
    """What isscompress knows about a checkpoint beyond its tensors."""

    format_version: int = FORMAT_VERSION
    family: str | None = None  # where the model came from (word_language_model, ...), kept across verbs
    architecture: str | None = None  # the architecture kind (see isscompress.architectures)
    spec: dict[str, Any] | None = None  # the architecture, as its to_dict()
    stage: str | None = None  # train, finetune, shrink, recover
    recipe: str | None = None  # the recipe's YAML
    vocabulary: tuple[str, ...] | None = None
    level: str | None = None  # "word" or "char": what a token of the vocabulary is
    threshold: float | None = None
    widths_before: dict[str, int] | None = None
    widths_after: dict[str, int] | None = None
    kept: dict[str, list[int]] | None = None
    max_abs_diff: float | None = None
    source: dict[str, str] | None = None  # the file this one was made from, and its sha256
    lineage: tuple[dict[str, Any], ...] = ()
    unknown: dict[str, Any] = field(default_factory=dict)  # keys of our record this version does not know
    foreign: dict[str, str] = field(default_factory=dict)  # the file's other header entries, verbatim

    @classmethod
    def from_header(cls, header: Mapping[str, str], where: str = "the checkpoint") -> "Metadata":
        """Read a safetensors header (or nothing); refuse a record from a newer format."""
        foreign = {k: v for k, v in header.items() if k != METADATA_KEY}
        raw = header.get(METADATA_KEY)
        if not raw:
            return cls(foreign=foreign)
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{where}: its isscompress metadata is not valid JSON ({err.msg}).",
                                  "The header was edited or damaged; shrink or fine-tune from the source again.") from None
        version = record.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{where} was written by a newer isscompress (metadata format {version}; this "
                                  f"version reads up to {FORMAT_VERSION}).", "Upgrade isscompress to read it.")
        known = {f.name for f in fields(cls)} - {"unknown", "foreign"}
        values = {k: v for k, v in record.items() if k in known}
        if values.get("vocabulary") is not None:
            values["vocabulary"] = tuple(values["vocabulary"])
        values["lineage"] = tuple(values.get("lineage", ()))
        return cls(**values, unknown={k: v for k, v in record.items() if k not in known}, foreign=foreign)

    def to_header(self) -> dict[str, str]:
        """The safetensors header: the foreign entries as they came, and our record as JSON."""
        record = {k: v for k, v in asdict(self).items() if k not in ("unknown", "foreign") and v not in (None, ())}
        record["format_version"] = FORMAT_VERSION
        if self.vocabulary is not None:
            record["vocabulary"] = list(self.vocabulary)
        if self.lineage:
            record["lineage"] = list(self.lineage)
        return {**self.foreign, METADATA_KEY: json.dumps({**self.unknown, **record}, sort_keys=True)}

    def derived(self, stage: str, source_name: str, sha256: str | None, family: str) -> "Metadata":
        """Metadata for a checkpoint made from this one: everything carries over, plus one lineage step."""
        step = {"stage": stage, "from": source_name, "sha256": sha256, "family": family}
        return replace(self, format_version=FORMAT_VERSION, family=family, stage=stage, max_abs_diff=None,
                       source={"file": source_name, "sha256": sha256}, lineage=(*self.lineage, step))

    def shown(self) -> dict[str, Any]:
        """Our record for display, without the long lists (kept indices, vocabulary); {} when there is none."""
        if replace(self, foreign={}) == Metadata():
            return {}
        return {k: v for k, v in json.loads(self.to_header()[METADATA_KEY]).items() if k not in ("kept", "vocabulary")}
