"""pytorch/examples word_language_model: ``encoder`` embedding, one multi-layer ``rnn``, ``decoder``."""

from __future__ import annotations

import re

from ...layers.cells import CELLS
from ...errors import CheckpointError
from ..files import RawCheckpoint
from ._rename import rename_layers
from .base import Canonical, Family, same_tensor

PATTERN = re.compile(r"^rnn\.(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")


def matches(tensors) -> bool:
    # safetensors' save_model stores a tied matrix once, under one of its names (often decoder.weight)
    return ("encoder.weight" in tensors or "decoder.weight" in tensors) and "rnn.weight_ih_l0" in tensors


def convert(raw: RawCheckpoint) -> Canonical:
    if "decoder.weight" not in raw.tensors and "decoder.bias" not in raw.tensors:
        # word_language_model's decoder always has a bias, tied or not: without any decoder tensor this is an
        # embedding and an RNN with some other head (a classifier whose head was removed), not a tied LM
        raise CheckpointError(
            f"{raw.path} has an embedding (encoder.weight) and an rnn but no decoder: it is not a word_language_model "
            "language model, and treating it as a tied one would compute a different function.",
            "If it is a model of your own (classifier, tagger, seq2seq, ...), keep its head in the state dict and "
            "pass --arch FILE.py:FACTORY (docs/any-model.md).")
    tensors, sources = rename_layers(raw.tensors, PATTERN, lambda m: (int(m.group(2)), m.group(1), m.group(3)))
    if "encoder.weight" not in tensors:  # tied, stored once as the decoder: the shape check confirms it fits
        tensors["encoder.weight"] = tensors.pop("decoder.weight")
        sources["encoder.weight"] = "decoder.weight"
    decoder = tensors.get("decoder.weight")
    tied = decoder is None or same_tensor(decoder, tensors["encoder.weight"])
    if tied:
        tensors.pop("decoder.weight", None)
    rnn_type = raw.attributes.get("rnn_type") or raw.metadata.get("rnn_type")
    return Canonical(tensors, rnn_type if rnn_type in CELLS else None, tied, sources)


FAMILY = Family(
    name="word_language_model",
    expects="encoder.weight, rnn.weight_ih_l{k}, rnn.weight_hh_l{k}, rnn.bias_*_l{k}, decoder.weight, decoder.bias",
    matches=matches,
    convert=convert,
    source_key=lambda layer, param, suffix: f"rnn.{param}_l{layer}{suffix}",
)
