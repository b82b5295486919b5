"""Keras recurrent models (``.h5`` of Keras 1/2 and tf_keras, ``.keras`` of Keras 3) read with h5py, without
TensorFlow, into isscompress's own layout (``encoder.weight``, ``layers.{l}.*`` in PyTorch's ``nn.LSTM``/``nn.GRU``
naming, ``decoder.*``), converted so that the PyTorch cell computes what the Keras layer computed:

- kernels are stored ``(inputs, gates * units)``: PyTorch wants the transpose;
- LSTM gates are i, f, c, o in both; Keras's single bias goes to ``bias_ih`` (``bias_hh`` = 0);
  CuDNNLSTM's 8·units bias is ``[input biases, recurrent biases]``;
- GRU gates are z, r, h in Keras and r, z, n in PyTorch; only ``reset_after=True`` (TF2's default, and what
  CuDNNGRU computes) is PyTorch's GRU: its bias is ``(2, 3·units)``, input then recurrent.

Every setting of every layer is read: the cell equations against the one table (``io.equations``), the rest
against a list of settings known not to change what a trained layer computes (initialisers, regularisers,
constraints, dropout, ...). An unknown setting, a layer not declared by Keras itself, weights whose shapes are not
what the declared class and units make, or a layer off the one chain, is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy
import torch
from torch import Tensor

from ..layers.cells import CELLS
from ..errors import CheckpointError
from .equations import check_settings, declared_cell
from .keras_files import KerasLayer

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
RECURRENT = {"LSTM": "LSTM", "CuDNNLSTM": "LSTM", "GRU": "GRU", "CuDNNGRU": "GRU"}
CUDNN_EQUATIONS = {"activation": "tanh", "recurrent_activation": "sigmoid", "reset_after": True}
PASSIVE = {"InputLayer", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
           "ActivityRegularization"}  # the identity at inference
KERAS_MODULES = ("keras", "tf_keras", "tensorflow.keras", "tensorflow.python.keras")

_WEIGHTS = {f"{part}_{kind}" for part in ("kernel", "recurrent", "bias", "embeddings") for kind in
            ("initializer", "regularizer", "constraint")}
_KERAS1 = {"init", "inner_init", "forget_bias_init", "W_regularizer", "U_regularizer", "b_regularizer",
           "W_constraint", "U_constraint", "b_constraint", "dropout_W", "dropout_U", "consume_less", "output_dim"}
COMMON = {"name", "trainable", "dtype", "batch_input_shape", "batch_shape", "input_shape", "input_dim",
          "input_length", "batch_size", "weights", "activity_regularizer", "autocast"}
# settings that do not change what a trained layer computes, per layer kind (unknown ones are refused)
INERT: dict[str, set[str]] = {
    "recurrent": COMMON | _WEIGHTS | _KERAS1 | {
        "units", "use_bias", "return_state", "stateful", "unroll", "implementation", "unit_forget_bias", "dropout",
        "recurrent_dropout", "seed", "zero_output_for_mask", "use_cudnn"},
    "Embedding": COMMON | _WEIGHTS | _KERAS1 | {"output_dim", "sparse", "dropout", "lora_alpha"},
    "Dense": COMMON | _WEIGHTS | _KERAS1 | {"units", "use_bias", "lora_alpha", "bias"},
    "Bidirectional": COMMON | {"layer", "backward_layer", "merge_mode"},
    "passive": COMMON | {"rate", "noise_shape", "seed", "p", "stddev", "sparse", "ragged", "optional", "l1", "l2"},
}
NULL_ONLY = {"lora_rank", "quantization_config"}  # present in Keras 3 configs; anything but null changes the weights
CHECKED = {"activation", "recurrent_activation", "inner_activation", "go_backwards", "time_major", "reset_after",
           "return_sequences", "mask_zero"}  # read below, against io.equations' table


def is_keras_zip(names: list[str]) -> bool:
    return "config.json" in names and "model.weights.h5" in names


def refuse_layer(path: Path, layer: str, kind: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: Keras layer '{layer}' ({kind}) {what}; isscompress does not convert it, so that "
                           "it never compresses a different function than the one you trained.",
                           "Retrain or convert that layer with the standard settings (tanh, sigmoid gates, "
                           "reset_after=True for GRU, forwards, no masking), or compress it with Keras tools.")


def check_declaration(path: Path, name: str, kind: str, module: Any, registered: Any) -> None:
    """A layer class from Keras itself; a custom class of the same name may compute anything."""
    stock_module = module is None or (isinstance(module, str) and module.split(".")[0] in
                                      {m.split(".")[0] for m in KERAS_MODULES})
    if not stock_module or registered not in (None, kind):
        raise refuse_layer(path, name, kind, f"is declared by {module!r} as {registered!r}, not by Keras: a "
                           "custom class may compute something else than the stock layer of that name")


def check_keys(path: Path, name: str, kind: str, config: dict, family: str) -> None:
    for key, value in config.items():
        if key in NULL_ONLY:
            if value is not None:
                raise refuse_layer(path, name, kind, f"has {key} = {str(value)[:40]!r} (weights changed at run time)")
        elif key not in INERT[family] and key not in CHECKED:
            raise refuse_layer(path, name, kind, f"has the setting {key} = {str(value)[:40]!r}, which isscompress "
                               "does not know (it may change what the layer computes)")


def _cell_settings(path: Path, name: str, kind: str, config: dict, version: str,
                   backward: bool = False) -> dict[str, Any]:
    """A recurrent layer's equations, Keras 1 names translated, checked against the table (which names the cell kind
    they are); its units."""
    cell = RECURRENT[kind]
    check_keys(path, name, kind, config, "recurrent")
    settings = dict(config)
    if "recurrent_activation" not in settings and "inner_activation" in settings:  # Keras 1's name
        settings["recurrent_activation"] = settings.pop("inner_activation")
    if kind.startswith("CuDNN"):
        settings = {**CUDNN_EQUATIONS, **settings}
    for key, old in (("recurrent_activation", "hard_sigmoid before Keras 2.3"), ("reset_after", "False before TF 2")):
        if (key != "reset_after" or cell == "GRU") and key not in settings:
            raise refuse_layer(path, name, kind, f"does not say its {key}, whose default changed between Keras "
                               f"versions ({old}); the file is ambiguous")
    if not settings.get("return_sequences", False):
        raise refuse_layer(path, name, kind, "returns only its last step (return_sequences=False), so the layers "
                           "after it do not see a sequence")
    settings["go_backwards"] = bool(settings.get("go_backwards")) != backward  # the backward half runs reversed
    if settings.get("recurrent_activation") == "hard_sigmoid" and version.split(".")[0] not in ("1", "2"):
        # Keras 3's is relu6(x + 3) / 6, not Keras 1/2's clip(0.2 x + 0.5, 0, 1); an unsaid version is not guessed
        settings["recurrent_activation"] = (f"Keras {version.split('.')[0][:3]}'s hard_sigmoid, relu6(x+3)/6"
                                            if version else "hard_sigmoid of an unsaid Keras version")
    subject = f"{path}: Keras layer '{name}' ({kind}{', backward half' if backward else ''}) has"
    cell = declared_cell({k: v for k, v in settings.items() if k in CHECKED}, cell, subject, keyword=True)
    units = settings.get("units", settings.get("output_dim"))
    if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
        raise refuse_layer(path, name, kind, f"has units = {str(units)[:20]!r}, not a positive whole number")
    return {"cell": cell, "units": units, "use_bias": settings.get("use_bias", True), "cudnn": kind.startswith("CuDNN")}


def _t(array: numpy.ndarray) -> Tensor:
    return torch.from_numpy(numpy.ascontiguousarray(array, dtype=numpy.float32))


def _gru_order(t: Tensor, units: int) -> Tensor:
    """Keras's z, r, h blocks (first axis) as PyTorch's r, z, n."""
    z, r, h = t.split(units)
    return torch.cat([r, z, h])


def _from_cudnn(weights: list[numpy.ndarray], gates: int) -> list[numpy.ndarray]:
    """CuDNN layers store each gate's input kernel in Fortran order and its recurrent kernel transposed
    (tf_keras's own conversion, saving/legacy/hdf5_format.py); return Keras's plain layout."""
    kernel = numpy.hstack([k.T.reshape(k.shape, order="F") for k in numpy.hsplit(weights[0], gates)])
    recurrent = numpy.hstack([k.T for k in numpy.hsplit(weights[1], gates)])
    return [kernel, recurrent, *weights[2:]]


def _check_shapes(path: Path, name: str, kind: str, cell: dict, weights: list[numpy.ndarray], inputs: int) -> None:
    """The weights a layer of this class, units and input width has: a 3u-wide 'LSTM' is not read as a GRU."""
    gates, units = CELLS[cell["cell"]].gates, cell["units"]
    width = gates * units
    bias = (2 * width,) if cell["cudnn"] else (2, width) if cell["cell"] == "GRU" else (width,)
    expected = [(inputs, width), (units, width)] + ([bias] if cell["use_bias"] else [])
    shapes = [tuple(w.shape) for w in weights]
    if shapes != expected:
        raise refuse_layer(path, name, kind, f"has weights of shapes {shapes}, but a {kind} of {units} units "
                           f"reading {inputs} features has {expected}")


def cell_tensors(cell: dict, weights: list[numpy.ndarray], suffix: str) -> dict[str, Tensor]:
    gates, units = CELLS[cell["cell"]].gates, cell["units"]
    if cell["cudnn"]:
        weights = _from_cudnn(weights, gates)
    kernel, recurrent = _t(weights[0]).t().contiguous(), _t(weights[1]).t().contiguous()
    if len(weights) > 2:
        bias = _t(weights[2])
        if cell["cudnn"] or bias.dim() == 2:
            bias_ih, bias_hh = bias.reshape(2, gates * units)
        else:
            bias_ih, bias_hh = bias, torch.zeros_like(bias)
    else:
        bias_ih = bias_hh = torch.zeros(gates * units)
    if cell["cell"] == "GRU":
        kernel, recurrent = _gru_order(kernel, units), _gru_order(recurrent, units)
        bias_ih, bias_hh = _gru_order(bias_ih, units), _gru_order(bias_hh, units)
    return {f"weight_ih_l0{suffix}": kernel, f"weight_hh_l0{suffix}": recurrent,
            f"bias_ih_l0{suffix}": bias_ih.contiguous(), f"bias_hh_l0{suffix}": bias_hh.contiguous()}


def _halves(path: Path, layer: KerasLayer) -> list[tuple[str, dict]]:
    """(class, config) of each direction a recurrent or Bidirectional layer runs, each declaration checked."""
    if layer.kind != "Bidirectional":
        return [(layer.kind, layer.config)]
    check_keys(path, layer.name, layer.kind, layer.config, "Bidirectional")
    merge = layer.config.get("merge_mode", "concat")
    if merge != "concat":
        raise refuse_layer(path, layer.name, layer.kind, f"merges its directions with {str(merge)[:20]!r}")
    halves = []
    for part in ("layer", "backward_layer"):
        inner = layer.config.get(part) if part == "layer" else layer.config.get(part) or layer.config.get("layer")
        if not (isinstance(inner, dict) and isinstance(inner.get("class_name"), str)
                and isinstance(inner.get("config"), dict)):
            raise refuse_layer(path, layer.name, layer.kind, f"has no readable {part} declaration")
        kind = inner["class_name"]
        if kind not in RECURRENT:
            raise refuse_layer(path, layer.name, layer.kind, f"wraps a {kind[:40]}, which isscompress does not read")
        check_declaration(path, layer.name, kind, inner.get("module"), inner.get("registered_name"))
        halves.append((kind, inner["config"]))
    if layer.config.get("backward_layer") is None:  # Keras builds the backward half from the forward one, reversed
        halves[1] = (halves[1][0], {**halves[1][1], "go_backwards": not halves[1][1].get("go_backwards", False)})
    if halves[0][0] != halves[1][0]:
        raise refuse_layer(path, layer.name, layer.kind,
                           f"runs a {halves[0][0]} forwards and a {halves[1][0]} backwards")
    return halves


def recurrent_tensors(path: Path, layer: KerasLayer, inputs: int, version: str) -> tuple[dict[str, Tensor], int, str]:
    """One recurrent layer's tensors (both directions), its output width and its cell kind."""
    halves = _halves(path, layer)
    cells = [_cell_settings(path, layer.name, kind, config, version, backward=i == 1)
             for i, (kind, config) in enumerate(halves)]
    if len({(c["units"], c["use_bias"], c["cell"]) for c in cells}) > 1:
        raise refuse_layer(path, layer.name, layer.kind, "has directions of different widths, bias settings or gates")
    per = len(layer.weights) // len(halves)
    tensors = {}
    for direction, cell in enumerate(cells):
        part = layer.weights[direction * per:(direction + 1) * per] if per * len(halves) == len(layer.weights) \
            else layer.weights
        _check_shapes(path, layer.name, halves[direction][0], cell, part, inputs)
        tensors.update(cell_tensors(cell, part, "_reverse" if direction else ""))
    return tensors, cells[0]["units"] * len(cells), cells[0]["cell"]


def embedding_tensor(path: Path, layer: KerasLayer) -> tuple[Tensor, int]:
    check_keys(path, layer.name, layer.kind, layer.config, "Embedding")
    check_settings({"mask_zero": layer.config.get("mask_zero", False)}, "LSTM",
                   f"{path}: Keras layer '{layer.name}' (Embedding) has", keyword=True)
    shapes = [tuple(w.shape) for w in layer.weights]
    expected = [(layer.config.get("input_dim"), layer.config.get("output_dim"))]
    if shapes != expected:
        raise refuse_layer(path, layer.name, layer.kind,
                           f"has weights of shapes {shapes}, but its config declares {expected}")
    return _t(layer.weights[0]), shapes[0][1]


def dense_tensors(path: Path, layer: KerasLayer, inputs: int) -> dict[str, Tensor]:
    check_keys(path, layer.name, layer.kind, {k: v for k, v in layer.config.items() if k != "activation"}, "Dense")
    if layer.config.get("activation", "linear") not in ("linear", "softmax"):
        raise refuse_layer(path, layer.name, layer.kind,
                           f"applies activation={str(layer.config['activation'])[:40]!r} to its output")
    units = layer.config.get("units", layer.config.get("output_dim"))
    expected = [(inputs, units)] + ([(units,)] if layer.config.get("use_bias", True) else [])
    if [tuple(w.shape) for w in layer.weights] != expected:
        shapes = [tuple(w.shape) for w in layer.weights]
        raise refuse_layer(path, layer.name, layer.kind, f"has weights of shapes {shapes}, but a Dense of {units} "
                           f"units reading {inputs} features has {expected}")
    tensors = {"decoder.weight": _t(layer.weights[0]).t().contiguous()}
    if len(layer.weights) > 1:
        tensors["decoder.bias"] = _t(layer.weights[1])
    return tensors
