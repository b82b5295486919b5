"""A whole Keras model read as isscompress's stack: its layers in data-flow order — Embedding, recurrent layers (a
BatchNormalization between them folded into the next, io.keras_batchnorm), Dense — each converted by io.keras."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..errors import CheckpointError
from .equations import CELL_KIND
from .keras import (PASSIVE, RECURRENT, check_declaration, check_keys, dense_tensors, embedding_tensor,
                    recurrent_tensors, refuse_layer)
from .keras_batchnorm import PerFeature, batchnorm_map, compose, fold_into_reader, refuse
from .keras_files import KerasLayer, read_h5_layers, read_keras_zip_layers
from .limits import ZIP_ERRORS


class _Chain:
    """The stack being read, layer by layer: its tensors, the width the next layer reads, the cell kind, and a
    BatchNormalization's per-feature map waiting for the layer that reads it."""

    def __init__(self, path: Path) -> None:
        self.path, self.recurrent, self.done = path, 0, False
        self.tensors: dict[str, Tensor] = {}
        self.width: int | None = None
        self.cells: set[str] = set()
        self.pending: PerFeature | None = None
        self.pending_name = ""

    def fold(self, weight_key: str, bias_key: str, layer: KerasLayer) -> None:
        """The waiting per-feature map, folded into the reader ``weight_key`` (and its bias)."""
        mapping = self.pending
        if mapping is None:
            return
        try:
            weight, bias = fold_into_reader(self.tensors[weight_key], self.tensors.get(bias_key), mapping)
        except ValueError:
            raise refuse(self.path, layer.name, layer.kind, f"has no bias, so the shift of the BatchNormalization "
                         f"'{self.pending_name}' before it cannot be folded into it") from None
        self.tensors[weight_key] = weight
        if bias is not None:
            self.tensors[bias_key] = bias

    def add(self, layer: KerasLayer, version: str) -> None:
        path = self.path
        if self.done:
            raise CheckpointError(f"{path}: Keras layer '{layer.name}' ({layer.kind}) follows the Dense output layer.",
                                  "isscompress reads Embedding -> recurrent layers -> Dense models.")
        if layer.kind == "Embedding":
            if self.width is not None:
                raise CheckpointError(f"{path}: Keras layer '{layer.name}' (Embedding) is not the first layer.",
                                      "isscompress reads Embedding -> recurrent layers -> Dense models.")
            self.tensors["encoder.weight"], self.width = embedding_tensor(path, layer)
        elif self.width is None:
            raise CheckpointError(f"{path}: Keras layer '{layer.name}' ({layer.kind}) has no Embedding before it.",
                                  "isscompress reads Embedding -> recurrent layers -> Dense models.")
        elif layer.kind == "BatchNormalization":
            self.pending = compose(self.pending, batchnorm_map(path, layer, self.width))
            self.pending_name = layer.name
        elif layer.kind in RECURRENT or layer.kind == "Bidirectional":
            found, width, cell = recurrent_tensors(path, layer, self.width, version)
            self.tensors.update({f"layers.{self.recurrent}.{key}": value for key, value in found.items()})
            for suffix in ("", "_reverse"):
                if f"weight_ih_l0{suffix}" in found:
                    self.fold(f"layers.{self.recurrent}.weight_ih_l0{suffix}",
                              f"layers.{self.recurrent}.bias_ih_l0{suffix}", layer)
            self.pending, self.width = None, width
            self.cells.add(cell)
            self.recurrent += 1
        elif layer.kind == "Dense" and self.recurrent:
            self.tensors.update(dense_tensors(path, layer, self.width))
            self.fold("decoder.weight", "decoder.bias", layer)
            self.pending, self.done = None, True
        elif layer.kind == "Masking":
            raise refuse_layer(path, layer.name, layer.kind, "masks steps (Keras carries the state over masked "
                               "steps; PyTorch's cells step every position)")
        else:
            raise CheckpointError(f"{path}: Keras layer '{layer.name}' is a {layer.kind[:60]}, which isscompress does "
                                  "not read here.", "isscompress reads Embedding -> LSTM/GRU (Bidirectional, CuDNN) "
                                  "-> Dense, with BatchNormalization between them.")


def convert_layers(path: Path, layers: list[KerasLayer], version: str) -> tuple[dict[str, Tensor], str]:
    """Embedding -> recurrent layers (a BatchNormalization between them folded into the next) -> Dense, in data-flow
    order, as isscompress's tensors; and the cell kind of the recurrent layers."""
    chain = _Chain(path)
    for layer in layers:
        check_declaration(path, layer.name, layer.kind, layer.module, layer.registered_name)
        if layer.kind in PASSIVE:
            check_keys(path, layer.name, layer.kind, layer.config, "passive")
        else:
            chain.add(layer, version)
    if not chain.recurrent:
        raise CheckpointError(f"{path} is a Keras model without LSTM or GRU layers.", "Point to a recurrent model.")
    if chain.pending is not None:
        raise CheckpointError(f"{path}: the BatchNormalization '{chain.pending_name}' is the model's last layer, so "
                              "no layer reads it that it could be folded into.",
                              "isscompress reads Embedding -> recurrent layers -> Dense models.")
    if len(chain.cells) > 1:
        kinds = ", ".join(sorted(chain.cells))
        raise CheckpointError(f"{path}: its recurrent layers are of different cell kinds ({kinds}); isscompress's "
                              "stack has one kind for all of its layers.",
                              "Retrain the layers with one set of gate activations.")
    return chain.tensors, chain.cells.pop()


def read_keras_file(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors in isscompress's layout, and a note of where they came from, for a Keras ``.h5``/``.keras`` file."""
    try:
        layers, version = read_keras_zip_layers(path) if kind == "keras-zip" else read_h5_layers(path)
        tensors, cell = convert_layers(path, layers, version)
    except CheckpointError:
        raise
    except (*ZIP_ERRORS, KeyError, IndexError, TypeError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{path} looks like a Keras model but could not be read ({type(err).__name__}: "
                              f"{str(err)[:200]}).", "It may be damaged, or from a Keras version isscompress does not "
                              "know; save it again with model.save().") from None
    source = "Keras 3 (.keras)" if kind == "keras-zip" else "Keras HDF5 (.h5)"
    return tensors, {"keras": source, CELL_KIND: cell}
