"""Our own layout: a stack of single-layer RNNs ``layers.{l}`` with their own widths.

This is what ``isscompress shrink`` and ``finetune`` write; the spec is stored in the
metadata, and re-derived from shapes when the metadata is missing (a plain state dict of
the stack's own module, architectures/stack_module.py).
"""

from __future__ import annotations

from ...architectures.stack import layer_key_pattern
from ...layers.cells import CELLS
from ...errors import CheckpointError
from ...yaml_lines import shown
from ..equations import CELL_KIND
from ..files import RawCheckpoint
from .base import Canonical, Family, same_tensor


def matches(tensors) -> bool:
    pattern = layer_key_pattern()
    return any(pattern.match(key) for key in tensors)


def _stored_claims(raw: RawCheckpoint) -> tuple[bool | None, str | None]:
    """The metadata's ``tied`` and ``cell``, each strictly of its type (a claim, checked against the tensors next)."""
    stored = raw.record.spec
    if stored is None:
        return None, None
    tied, cell = stored.get("tied"), stored.get("cell")
    if not isinstance(tied, bool):
        raise CheckpointError(f"its isscompress metadata says tied is {shown(tied)}, not true or false.",
                              "The header was edited or damaged; shrink or fine-tune from the source again.")
    if cell not in CELLS:
        raise CheckpointError(f"its isscompress metadata names the cell {shown(cell)}, which isscompress "
                              f"does not know (it knows {', '.join(CELLS)}).",
                              "The header was edited or damaged, or a newer isscompress wrote it.")
    return tied, cell


def convert(raw: RawCheckpoint) -> Canonical:
    tensors = dict(raw.tensors)
    claimed, cell = _stored_claims(raw)
    cell = cell or raw.attributes.get(CELL_KIND)  # what a reader of another format determined (a Keras layer's gates)
    encoder, decoder = tensors.get("encoder.weight"), tensors.get("decoder.weight")
    holds_tie = encoder is not None and (decoder is None or same_tensor(decoder, encoder))
    # an untied model may hold two equal matrices (both read, the same function); a tied one never two different
    tied = holds_tie if claimed is None else claimed
    if tied and not holds_tie or not tied and encoder is not None and decoder is None:
        held = ("a decoder.weight of its own, unlike encoder.weight" if decoder is not None else
                "no encoder.weight" if encoder is None else "no decoder.weight")
        raise CheckpointError(f"its isscompress metadata says the model is {'' if tied else 'not '}tied, "
                              f"but its tensors hold {held}. The tensors are the model; metadata that disagrees with "
                              "them was edited or damaged.",
                              "Shrink or fine-tune from the source again, or remove the isscompress header entry.")
    if tied:
        tensors.pop("decoder.weight", None)
    return Canonical(tensors, cell_hint=cell, tied=tied, architecture=raw.record.architecture)


FAMILY = Family(
    name="isscompress",
    expects="layers.{l}.weight_ih_l0[_reverse], layers.{l}.weight_hh_l0, ... (optionally encoder.weight, decoder.*)",
    matches=matches,
    convert=convert,
)
