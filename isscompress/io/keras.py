"""Keras recurrent models (``.h5`` of Keras 2 / tf_keras, ``.keras`` of Keras 3) read with h5py, without TensorFlow.

The layers become isscompress's own layout (``encoder.weight``, ``layers.{l}.*`` in PyTorch's
``nn.LSTM``/``nn.GRU`` naming, ``decoder.*``), converted so that the PyTorch cell computes what the
Keras layer computed:

- kernels are stored ``(inputs, gates * units)``: PyTorch wants the transpose;
- LSTM gates are i, f, c, o in both; Keras's single bias goes to ``bias_ih`` (``bias_hh`` = 0);
  CuDNNLSTM's 8·units bias is ``[input biases, recurrent biases]``;
- GRU gates are z, r, h in Keras and r, z, n in PyTorch; only ``reset_after=True`` (TF2's default, and
  what CuDNNGRU computes) is PyTorch's GRU: its bias is ``(2, 3·units)``, input then recurrent;
- anything else a layer declares that PyTorch's cells cannot compute (``hard_sigmoid``, other activations,
  ``go_backwards``, ``reset_after=False``, a Bidirectional merge other than concat) is refused by name.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy
import torch
from torch import Tensor

from ..errors import CheckpointError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
RECURRENT = {"LSTM": "LSTM", "CuDNNLSTM": "LSTM", "GRU": "GRU", "CuDNNGRU": "GRU"}
IGNORED = {"InputLayer", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "Masking"}


def is_keras_zip(names: list[str]) -> bool:
    return "config.json" in names and "model.weights.h5" in names


def _h5py(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"{path} is a Keras model (HDF5); reading it needs h5py.",
                              "pip install 'isscompress[keras]' (h5py only; TensorFlow is not needed).") from None
    return h5py


def _snake(name: str) -> str:
    """Keras 3's own rule for the weight-file names of layers (``Bidirectional`` -> ``bidirectional``, ``LSTM`` -> ``lstm``)."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class _Layer:
    """One Keras layer: class, config, and its weight arrays in Keras's order."""

    def __init__(self, kind: str, config: dict, weights: list[numpy.ndarray]) -> None:
        self.kind, self.config, self.weights = kind, config, weights
        self.name = config.get("name", kind)


def _keras2_layers(path: Path) -> Iterator[_Layer]:
    h5py = _h5py(path)
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise CheckpointError(f"{path} is an HDF5 file without a Keras model configuration (weights only, or "
                                  "not Keras).", "Save the whole model with model.save('model.h5') or as .keras.")
        config = json.loads(f.attrs["model_config"])
        weights = f["model_weights"] if "model_weights" in f else f
        for layer in config["config"]["layers"]:
            name = layer["config"]["name"]
            arrays = []
            if name in weights:
                group = weights[name]
                arrays = [numpy.asarray(group[n]) for n in (w.decode() if isinstance(w, bytes) else w
                                                            for w in group.attrs.get("weight_names", []))]
            yield _Layer(layer["class_name"], layer["config"], arrays)


def _keras3_layers(path: Path) -> Iterator[_Layer]:
    h5py = _h5py(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights_file = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(weights_file, "r") as f:
        counts: dict[str, int] = {}

        def arrays(group: Any) -> list[numpy.ndarray]:
            found = []
            if "vars" in group:
                found += [numpy.asarray(group["vars"][k]) for k in sorted(group["vars"], key=int)]
            for child in ("cell", "forward_layer", "backward_layer"):
                if child in group:
                    found += arrays(group[child])
            return found

        for layer in config["config"]["layers"]:
            kind = layer["class_name"]
            if kind == "InputLayer":
                continue
            base = _snake(kind)
            count = counts.get(base, 0)
            counts[base] = count + 1
            key = base if count == 0 else f"{base}_{count}"
            group = f["layers"].get(key) if "layers" in f else None
            yield _Layer(kind, layer["config"], arrays(group) if group is not None else [])


def _refuse(path: Path, layer: _Layer, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: Keras layer '{layer.name}' ({layer.kind}) {what}; PyTorch's recurrent cells cannot "
                           "compute that, so isscompress does not convert it.",
                           "Retrain or convert that layer with the standard settings (tanh, sigmoid gates, "
                           "reset_after=True for GRU), or compress the Keras model with Keras tools.")


def _check_cell(path: Path, layer: _Layer, config: dict) -> None:
    kind = layer.kind if layer.kind != "Bidirectional" else config.get("class_name", "?")
    if kind.startswith("CuDNN"):
        return  # fixed cuDNN equations: tanh, sigmoid, GRU with reset after
    if config.get("activation", "tanh") != "tanh":
        raise _refuse(path, layer, f"uses activation={config['activation']!r}")
    if config.get("recurrent_activation", "sigmoid") != "sigmoid":
        raise _refuse(path, layer, f"uses recurrent_activation={config['recurrent_activation']!r}")
    if config.get("go_backwards"):
        raise _refuse(path, layer, "runs backwards (go_backwards=True)")
    if kind == "GRU" and not config.get("reset_after", False):
        raise _refuse(path, layer, "is a GRU with reset_after=False (the reset gate applied before the recurrent "
                      "matrix)")


def _t(array: numpy.ndarray) -> Tensor:
    return torch.from_numpy(numpy.ascontiguousarray(array, dtype=numpy.float32))


def _gru_order(t: Tensor, units: int) -> Tensor:
    """Keras's z, r, h blocks (first axis) as PyTorch's r, z, n."""
    z, r, h = t.split(units)
    return torch.cat([r, z, h])


def _from_cudnn(weights: list[numpy.ndarray]) -> list[numpy.ndarray]:
    """CuDNN layers store each gate's input kernel in Fortran order and its recurrent kernel transposed
    (tf_keras's own conversion, saving/legacy/hdf5_format.py); return Keras's plain layout."""
    gates = weights[0].shape[1] // weights[1].shape[0]
    kernel = numpy.hstack([k.T.reshape(k.shape, order="F") for k in numpy.hsplit(weights[0], gates)])
    recurrent = numpy.hstack([k.T for k in numpy.hsplit(weights[1], gates)])
    return [kernel, recurrent, *weights[2:]]


def _cell_tensors(kind: str, cudnn: bool, weights: list[numpy.ndarray], suffix: str) -> dict[str, Tensor]:
    if cudnn:
        weights = _from_cudnn(weights)
    kernel, recurrent = _t(weights[0]).t().contiguous(), _t(weights[1]).t().contiguous()
    units = recurrent.shape[1]
    gates = kernel.shape[0] // units
    if len(weights) > 2:
        bias = _t(weights[2])
        if cudnn or bias.dim() == 2:
            bias_ih, bias_hh = bias.reshape(2, gates * units)
        else:
            bias_ih, bias_hh = bias, torch.zeros_like(bias)
    else:
        bias_ih = bias_hh = torch.zeros(gates * units)
    if kind == "GRU":
        kernel, recurrent = _gru_order(kernel, units), _gru_order(recurrent, units)
        bias_ih, bias_hh = _gru_order(bias_ih, units), _gru_order(bias_hh, units)
    return {f"weight_ih_l0{suffix}": kernel, f"weight_hh_l0{suffix}": recurrent,
            f"bias_ih_l0{suffix}": bias_ih.contiguous(), f"bias_hh_l0{suffix}": bias_hh.contiguous()}


def read_keras(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors in isscompress's layout, and a note of where they came from, for a Keras ``.h5``/``.keras`` file."""
    layers = list(_keras3_layers(path) if kind == "keras-zip" else _keras2_layers(path))
    tensors: dict[str, Tensor] = {}
    recurrent = 0
    dense_seen = False
    for layer in layers:
        if layer.kind in IGNORED:
            continue
        if dense_seen:
            raise CheckpointError(f"{path}: Keras layer '{layer.name}' ({layer.kind}) follows the Dense output layer.",
                                  "isscompress reads Embedding -> recurrent layers -> Dense models.")
        if layer.kind == "Embedding":
            if recurrent or "encoder.weight" in tensors:
                raise CheckpointError(f"{path}: Keras layer '{layer.name}' (Embedding) is not the first layer.",
                                      "isscompress reads Embedding -> recurrent layers -> Dense models.")
            tensors["encoder.weight"] = _t(layer.weights[0])
        elif layer.kind in RECURRENT or layer.kind == "Bidirectional":
            inner = layer.config.get("layer", {}) if layer.kind == "Bidirectional" else {}
            cell_class = inner.get("class_name", layer.kind)
            if cell_class not in RECURRENT:
                raise CheckpointError(f"{path}: Keras layer '{layer.name}' wraps a {cell_class}, which isscompress does "
                                      "not read.", "Use LSTM, GRU, CuDNNLSTM or CuDNNGRU layers.")
            config = inner.get("config", layer.config)
            _check_cell(path, layer, config)
            if layer.kind == "Bidirectional" and layer.config.get("merge_mode", "concat") != "concat":
                raise _refuse(path, layer, f"merges its directions with {layer.config['merge_mode']!r}")
            directions = 2 if layer.kind == "Bidirectional" else 1
            per = len(layer.weights) // directions
            for direction in range(directions):
                part = layer.weights[direction * per:(direction + 1) * per]
                for key, value in _cell_tensors(RECURRENT[cell_class], cell_class.startswith("CuDNN"), part,
                                                "_reverse" if direction else "").items():
                    tensors[f"layers.{recurrent}.{key}"] = value
            recurrent += 1
        elif layer.kind == "Dense":
            if layer.config.get("activation", "linear") not in ("linear", "softmax"):
                raise _refuse(path, layer, f"applies activation={layer.config['activation']!r} to its output")
            tensors["decoder.weight"] = _t(layer.weights[0]).t().contiguous()
            if len(layer.weights) > 1:
                tensors["decoder.bias"] = _t(layer.weights[1])
            dense_seen = True
        else:
            raise CheckpointError(f"{path}: Keras layer '{layer.name}' is a {layer.kind}, which isscompress does not "
                                  "read.", "isscompress reads Embedding -> LSTM/GRU (Bidirectional, CuDNN) -> Dense.")
    if not recurrent:
        raise CheckpointError(f"{path} is a Keras model without LSTM or GRU layers.", "Point to a recurrent model.")
    source = "Keras 3 (.keras)" if kind == "keras-zip" else "Keras 2 HDF5 (.h5)"
    return tensors, {"keras": source}


def read_keras_file(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    try:
        return read_keras(path, kind)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, IndexError, json.JSONDecodeError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} looks like a Keras model but could not be read ({type(err).__name__}: {err}).",
                              "It may be damaged, or from a Keras version isscompress does not know; save it again "
                              "with model.save().") from None
