"""AWD-LSTM style: a list ``rnns`` of single-layer LSTMs with their own widths, weight-dropped."""

from __future__ import annotations

import re

from torch import Tensor

from ...errors import CheckpointError
from ..files import RawCheckpoint
from ._rename import rename_layers
from .base import Canonical, Family, same_tensor

PATTERN = re.compile(r"^rnns\.(\d+)\.(?:module\.)?(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l0(_reverse)?$")
RAW = re.compile(r"^rnns\.(\d+)\.(?:module\.)?(weight_hh)_l0(_reverse)?_raw$")
EMBEDDING_COPIES = ("encoder_dp.emb.weight",)  # fastai keeps the embedding a second time


def matches(tensors) -> bool:
    return "encoder.weight" in tensors and any(PATTERN.match(k) or RAW.match(k) for k in tensors)


def convert(raw: RawCheckpoint) -> Canonical:
    tensors = dict(raw.tensors)
    for key in EMBEDDING_COPIES:
        if key in tensors:
            if not same_tensor(tensors[key], tensors["encoder.weight"]):
                raise CheckpointError(f"'{key}' differs from 'encoder.weight'.", "Save the model with one embedding.")
            del tensors[key]
    # With weight drop the trained weight is weight_hh_l0_raw; a plain weight_hh_l0 beside it is a
    # dropped-out copy of it and is ignored.
    kept: dict[str, Tensor] = {}
    for key, value in tensors.items():
        if (m := RAW.match(key)) is not None:
            target = f"rnns.{m[1]}.weight_hh_l0{m[3] or ''}"
            if target in kept:  # rnns.0.module.weight_hh_l0_raw beside rnns.0.weight_hh_l0_raw: which one trained?
                raise CheckpointError(f"Two tensors hold the trained recurrent weight of rnns.{m[1]} (one is "
                                      f"'{key}').", "Keep only one of them in the checkpoint.")
            kept[target] = value
    for key, value in tensors.items():
        m = PATTERN.match(key)
        if RAW.match(key) or (m and m[2] == "weight_hh" and f"rnns.{m[1]}.weight_hh_l0{m[3] or ''}" in kept):
            continue
        kept[key] = value
    tensors = kept
    tensors, sources = rename_layers(tensors, PATTERN, lambda m: (int(m.group(1)), m.group(2), m.group(3)))
    decoder = tensors.get("decoder.weight")
    tied = decoder is None or same_tensor(decoder, tensors["encoder.weight"])
    if tied:
        tensors.pop("decoder.weight", None)
    return Canonical(tensors, "LSTM", tied, sources)


FAMILY = Family(
    name="awd_lstm",
    expects="encoder.weight, rnns.{i}.[module.]weight_ih_l0, rnns.{i}.[module.]weight_hh_l0[_raw], decoder.*",
    matches=matches,
    convert=convert,
    source_key=lambda layer, param, suffix: f"rnns.{layer}.{param}_l0{suffix}",
)
