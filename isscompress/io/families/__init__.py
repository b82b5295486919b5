"""The registry of checkpoint layouts. Adding a family: one module, one line here."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor

from ...errors import CheckpointError
from . import awd_lstm, isscompress_layout, lstm_stack, word_language_model
from .base import Canonical, Family

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        isscompress_layout.FAMILY,
        word_language_model.FAMILY,
        awd_lstm.FAMILY,
        lstm_stack.FAMILY,
    )
}


def _key_sample(tensors: Mapping[str, Tensor], limit: int = 8) -> str:
    keys = sorted(tensors)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise CheckpointError(f"Unknown model family '{name}'.", f"Choose one of: {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def detect_family(tensors: Mapping[str, Tensor], source: str) -> Family:
    """The one family whose keys match; otherwise an error listing what each family expected."""
    found = [family for family in FAMILIES.values() if family.matches(tensors)]
    if len(found) == 1:
        return found[0]
    expected = " ".join(f"[{f.name}] {f.expects}." for f in FAMILIES.values())
    what = "matches no known model family" if not found else f"matches several families ({', '.join(f.name for f in found)})"
    raise CheckpointError(
        f"{source} {what}. Its keys: {_key_sample(tensors)}. Expected: {expected}",
        "Pass --family NAME to choose one, or rename the keys to one of these layouts. If it is a model of your "
        "own (classifier, tagger, seq2seq, attention model, ...), pass --arch FILE.py:FACTORY (FACTORY() returns "
        "the model and example inputs) or --groups FILE.yaml; see docs/any-model.md.",
    )


__all__ = ["FAMILIES", "Canonical", "Family", "detect_family", "get_family"]
