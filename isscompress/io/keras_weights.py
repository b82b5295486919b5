"""Keras weights-only files (``model.save_weights('w.h5')``): arrays by layer name, no model configuration.

Without a configuration nothing says which class a layer was or how it was set, so only what the arrays themselves
make unambiguous is read, named ``{layer}.{param}`` as PyTorch modules of those names would hold them (a user's
``--arch`` factory builds the model around them):

- a recurrent layer stored by a **CuDNN** class is recognised by its bias — one ``2 * gates * units`` vector, input
  and recurrent biases — and CuDNN computes fixed equations (sigmoid gates, tanh, a GRU's reset after the recurrent
  product): it becomes ``weight_ih_l0``/``weight_hh_l0``/``bias_ih_l0``/``bias_hh_l0`` in PyTorch's layout;
- a plain ``LSTM``/``GRU``/``SimpleRNN`` computes what its settings said, and its gate activation's default changed
  (Keras up to 2.2: ``hard_sigmoid``; from 2.3: ``sigmoid``): it is refused, naming the file's Keras version and that
  version's default, unless the user states the activation (``ISSCOMPRESS_KERAS_RECURRENT_ACTIVATION=sigmoid``);
- an ``Embedding``'s ``embeddings`` becomes ``.weight``; a Dense ``kernel``/``bias`` pair ``.weight`` (transposed)
  and ``.bias``; any other array keeps its own name (``attention.attention_W``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy
from torch import Tensor

from ..errors import CheckpointError
from .hdf5 import child, h5py_module, read_dataset
from .keras import cell_tensors, _t
from .keras_model import read_keras_file
from .limits import ReadBudget

STATED = "ISSCOMPRESS_KERAS_RECURRENT_ACTIVATION"  # the user's statement of a weights-only layer's gate activation


def is_weights_only(attrs: Any) -> bool:
    return "model_config" not in attrs and "layer_names" in attrs


MAX_LAYERS = 10_000  # a real model has hundreds at most; a crafted list of millions would take minutes to walk
MAX_WEIGHTS = 64  # per layer: a Keras layer holds a handful of arrays (a Bidirectional LSTM six)


def _text(value: Any, path: Path, what: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"{path}: the {what} is not UTF-8 text.",
                                  "The file is damaged or was not written by Keras; save the weights again.") from None
    return str(value)


def _names(values: Any, path: Path, what: str, limit: int) -> list[str]:
    names = [_text(name, path, what) for name in numpy.atleast_1d(values)]
    if len(names) > limit:
        raise CheckpointError(f"{path}: the file lists {len(names):,} {what}s, more than any Keras model has "
                              f"(at most {limit:,} are read).", "The file is damaged or crafted; save the weights again.")
    return names


def _version_default(version: str) -> str:
    parts = [int(p) for p in version.split(".")[:2] if p.isascii() and p.isdigit()]
    return "hard_sigmoid" if parts and tuple(parts) < (2, 3) else "sigmoid"


def _recurrent(path: Path, layer: str, arrays: dict[str, numpy.ndarray], version: str) -> dict[str, Tensor]:
    kernel, recurrent = arrays["kernel"], arrays["recurrent_kernel"]
    if kernel.ndim != 2 or recurrent.ndim != 2 or 0 in kernel.shape or 0 in recurrent.shape:
        raise CheckpointError(f"{path}: weights-only layer '{layer}' has a kernel of shape {kernel.shape} and a "
                              f"recurrent kernel of shape {recurrent.shape}; a recurrent layer's are non-empty "
                              "matrices.", "The file is damaged or crafted; save the weights again.")
    units = recurrent.shape[0]
    gates, bias = recurrent.shape[1] // units, arrays.get("bias")
    cudnn = bias is not None and bias.shape == (2 * gates * units,)
    cell = {4: "LSTM", 3: "GRU"}.get(gates)
    if cell is None or kernel.shape[1] != gates * units or recurrent.shape != (units, gates * units):
        raise CheckpointError(f"{path}: weights-only layer '{layer}' has a kernel {kernel.shape} and recurrent kernel "
                              f"{recurrent.shape}, which are no LSTM or GRU isscompress can read.",
                              "Save the whole model (model.save), so that its configuration is in the file.")
    if not cudnn:
        stated = os.environ.get(STATED)
        default = _version_default(version)
        if stated != "sigmoid" or (cell == "GRU" and (bias is None or bias.shape != (2, gates * units))):
            raise CheckpointError(
                f"{path}: weights-only layer '{layer}' is a plain {cell} saved by Keras {version}, whose default gate "
                f"activation is {default}; a weights-only file does not say which activation the layer was built "
                "with, and a PyTorch cell computes sigmoid gates" + (" with the reset gate after the recurrent product "
                                                                    "(reset_after=True)" if cell == "GRU" else "") + ".",
                "If the layer was built with recurrent_activation='sigmoid'" + (" and reset_after=True" if cell ==
                "GRU" else "") + f", say so: {STATED}=sigmoid. Otherwise save the whole model (model.save).")
    settings = {"cell": cell, "units": units, "cudnn": cudnn, "use_bias": bias is not None}
    weights = [kernel, recurrent] + ([bias] if bias is not None else [])
    return {f"{layer}.{key}": value for key, value in cell_tensors(settings, weights, "").items()}


def _layer_tensors(path: Path, layer: str, arrays: dict[str, numpy.ndarray], version: str) -> dict[str, Tensor]:
    if {"kernel", "recurrent_kernel"} <= arrays.keys():
        return _recurrent(path, layer, arrays, version)
    if set(arrays) == {"embeddings"}:
        return {f"{layer}.weight": _t(arrays["embeddings"])}
    if set(arrays) <= {"kernel", "bias"} and "kernel" in arrays and arrays["kernel"].ndim == 2:
        dense = {f"{layer}.weight": _t(arrays["kernel"]).t().contiguous()}
        return {**dense, **({f"{layer}.bias": _t(arrays["bias"])} if "bias" in arrays else {})}
    return {f"{layer}.{name}": _t(value) for name, value in arrays.items()}


def read_weights_only(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors named ``{layer}.{param}``, and a note of the file's Keras version, for a Keras weights-only .h5."""
    h5py = h5py_module(path)
    budget = ReadBudget(path)
    tensors: dict[str, Tensor] = {}
    with h5py.File(path, "r") as f:
        version = _text(f.attrs.get("keras_version", "unknown"), path, "keras_version")
        for layer in _names(f.attrs["layer_names"], path, "layer name", MAX_LAYERS):
            group = child(f, layer, path)
            names = _names(group.attrs.get("weight_names", []), path, "weight name", MAX_WEIGHTS) if group else []
            arrays: dict[str, numpy.ndarray] = {}
            for name in names:
                if "forward_" in name or "backward_" in name:
                    raise CheckpointError(f"{path}: weights-only layer '{layer}' is a Bidirectional wrapper, whose "
                                          "directions a weights-only file does not describe.",
                                          "Save the whole model (model.save), so that its configuration is in the file.")
                short = name.rsplit("/", 1)[-1].split(":")[0]
                if short in arrays:  # out/kernel:0 beside x/kernel:0: which one the layer uses is not in the file
                    raise CheckpointError(f"{path}: weights-only layer '{layer}' lists two weights named '{short}' "
                                          f"({', '.join(n for n in names if n.rsplit('/', 1)[-1].split(':')[0] == short)}"
                                          "); the file does not say which one the layer uses.",
                                          "Save the whole model (model.save), so that its configuration is in the file.")
                arrays[short] = read_dataset(group, name, budget, path)
            for key, value in _layer_tensors(path, layer, arrays, version).items() if arrays else ():
                if key in tensors:
                    raise CheckpointError(f"{path}: two weights-only layers both give the weight '{key}'.",
                                          "Save the whole model (model.save), so that its configuration is in the file.")
                tensors[key] = value
    if not tensors:
        raise CheckpointError(f"{path} is a Keras weights-only file without weights.", "Point to the model's weights.")
    return tensors, {"keras": f"Keras HDF5 weights only (save_weights), Keras {version}"}


def read_keras(path: Path, kind: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A Keras file of any kind: a whole model (.h5, .keras) or a weights-only .h5."""
    if kind == "hdf5":
        h5py = h5py_module(path)
        try:
            with h5py.File(path, "r") as f:
                weights_only = is_weights_only(f.attrs)
        except OSError:
            weights_only = False  # the whole-model reader says what is wrong with the file
        if weights_only:
            return read_weights_only(path)
    return read_keras_file(path, kind)
