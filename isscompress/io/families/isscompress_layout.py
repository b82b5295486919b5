"""Our own layout: a stack of single-layer RNNs ``layers.{l}`` with their own widths.

This is what ``isscompress shrink`` and ``finetune`` write; the spec is stored in the
metadata, and re-derived from shapes when the metadata is missing (a plain state dict of
:class:`isscompress.model.RecurrentModel`).
"""

from __future__ import annotations

from ...architectures.stack import LAYER_KEY
from ..files import RawCheckpoint
from .base import Canonical, Family, same_tensor


def matches(tensors) -> bool:
    return any(LAYER_KEY.match(key) for key in tensors)


def convert(raw: RawCheckpoint) -> Canonical:
    tensors = dict(raw.tensors)
    record = raw.record
    stored = record.spec
    if stored is not None:
        tied, cell = bool(stored["tied"]), stored["cell"]
    else:
        encoder, decoder = tensors.get("encoder.weight"), tensors.get("decoder.weight")
        tied = encoder is not None and (decoder is None or same_tensor(decoder, encoder))
        cell = None
    if tied:
        tensors.pop("decoder.weight", None)
    return Canonical(tensors, cell_hint=cell, tied=tied, architecture=record.architecture)


FAMILY = Family(
    name="isscompress",
    expects="layers.{l}.weight_ih_l0[_reverse], layers.{l}.weight_hh_l0, ... (optionally encoder.weight, decoder.*)",
    matches=matches,
    convert=convert,
)
