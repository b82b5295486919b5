"""Checkpoint metadata: one typed, versioned record, and everything else kept verbatim.

isscompress writes its own record as one JSON string under the ``isscompress`` key of a
safetensors header. A source file's other header entries (a vocabulary, a licence, a gate
activation) are not ours to interpret: they travel unchanged through every verb, and so do
keys of our own record that a newer isscompress added.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Mapping

from ..errors import CheckpointError
from ..json_text import parse_json
from ..yaml_lines import shown

METADATA_KEY = "isscompress"
FORMAT_VERSION = 1


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_map(value: Any, item: Callable[[Any], bool]) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and item(v) for k, v in value.items())


def _is_step(step: Any) -> bool:
    """One lineage step as :meth:`Metadata.derived` writes it: stage and source file, and the source's sha256."""
    return (isinstance(step, dict) and isinstance(step.get("stage"), str) and isinstance(step.get("from"), str)
            and (step.get("sha256") is None or isinstance(step.get("sha256"), str)) and "sha256" in step)


# Every field that says how tensors are read or what a model is, with the JSON type it must have: a claim of the
# wrong type (the string "false" for a boolean) is refused, never read by Python's truthiness.
FIELD_TYPES: dict[str, Callable[[Any], bool]] = {
    "format_version": _is_int,
    "family": lambda v: isinstance(v, str),
    "architecture": lambda v: isinstance(v, str),
    "spec": lambda v: isinstance(v, dict),
    "stage": lambda v: isinstance(v, str),
    "recipe": lambda v: isinstance(v, str),
    "vocabulary": lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v) and len(set(v)) == len(v),
    "level": lambda v: v in ("word", "char"),
    "threshold": _is_number,
    "widths_before": lambda v: _is_str_map(v, _is_int),
    "widths_after": lambda v: _is_str_map(v, _is_int),
    "kept": lambda v: _is_str_map(v, lambda k: isinstance(k, list) and all(_is_int(i) for i in k)),
    "max_abs_diff": _is_number,
    "source": lambda v: _is_str_map(v, lambda s: s is None or isinstance(s, str)),
    "lineage": lambda v: isinstance(v, list) and all(_is_step(step) for step in v),
}
FIELD_DESCRIPTIONS = {
    "format_version": "a whole number", "spec": "a JSON object", "vocabulary": "a list of distinct strings",
    "level": "'word' or 'char'", "threshold": "a finite number", "max_abs_diff": "a finite number",
    "widths_before": "an object of whole numbers", "widths_after": "an object of whole numbers",
    "kept": "an object of lists of unit indices", "source": "an object of strings",
    "lineage": "a list of steps {stage, from, sha256}",
}
FIELD_DESCRIPTIONS.update({name: "a string" for name in FIELD_TYPES if name not in FIELD_DESCRIPTIONS})


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
        hint = "The header was edited or damaged; shrink or fine-tune from the source again."
        record = parse_json(raw, f"{where}: its isscompress metadata", CheckpointError, hint)
        if not isinstance(record, dict):
            raise CheckpointError(f"{where}: its isscompress metadata is a {type(record).__name__}, not a JSON object.",
                                  hint)
        version = record.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{where}: its isscompress metadata has format_version {shown(version)}, which is "
                                  "not a format version (a whole number from 1).", hint)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{where} was written by a newer isscompress (metadata format {version}; this "
                                  f"version reads up to {FORMAT_VERSION}).", "Upgrade isscompress to read it.")
        known = {f.name for f in fields(cls)} - {"unknown", "foreign"}
        values = {k: v for k, v in record.items() if k in known}
        for name, value in values.items():
            if value is not None and not FIELD_TYPES[name](value):
                raise CheckpointError(f"{where}: its isscompress metadata field '{name}' is {shown(value)}, not "
                                      f"{FIELD_DESCRIPTIONS[name]}.", hint)
        if values.get("vocabulary") is not None:
            values["vocabulary"] = tuple(values["vocabulary"])
        values["lineage"] = tuple(values.get("lineage") or ())
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
