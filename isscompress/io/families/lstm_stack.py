"""A bare ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` state dict (multi-layer, bidirectional, projected)."""

from __future__ import annotations

import re

from ..files import RawCheckpoint
from ._rename import rename_layers
from .base import Canonical, Family

PATTERN = re.compile(r"^(?:(.+)\.)?(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def matches(tensors) -> bool:
    found = [PATTERN.match(key) for key in tensors]
    return all(found) and len({m.group(1) for m in found}) == 1 and any(m.group(3) == "0" for m in found)


def convert(raw: RawCheckpoint) -> Canonical:
    nonlinearity = raw.attributes.get("nonlinearity") or raw.metadata.get("nonlinearity")
    hint = "RNN_RELU" if nonlinearity == "relu" else None
    tensors, sources = rename_layers(raw.tensors, PATTERN, lambda m: (int(m.group(3)), m.group(2), m.group(4)))
    return Canonical(tensors, cell_hint=hint, sources=sources)


FAMILY = Family(
    name="lstm_stack",
    expects="only [prefix.]weight_ih_l{k}, weight_hh_l{k}, bias_*_l{k}, weight_hr_l{k} (and _reverse) keys",
    matches=matches,
    convert=convert,
    source_key=lambda layer, param, suffix: f"{param}_l{layer}{suffix}",
)
