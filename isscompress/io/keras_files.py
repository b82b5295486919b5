"""The containers of Keras models — ``.h5`` (Keras 1/2, tf_keras) and the ``.keras`` zip (Keras 3) — read into a
list of layers (class, config, weight arrays) in the order data flows through them.

Reading is bounded (``limits.ReadBudget``) and stays inside the file (``hdf5``); a functional model's topology
is read from its ``inbound_nodes``, and only a single chain from input to output is accepted, so parallel,
reordered or shared layers are refused by name instead of being stacked in list order.
"""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from ..errors import CheckpointError
from .hdf5 import child, h5py_module, read_dataset
from .limits import ReadBudget, copy_bounded

CONFIG_LIMIT = 16 * 2**20  # a model configuration is JSON text: megabytes at most
CALL_ARGUMENTS = {"mask", "training"}  # a call argument that is None/False changes nothing


@dataclass
class KerasLayer:
    """One Keras layer: class, its declaration (module, registered name), config and weights in Keras's order."""

    kind: str
    config: dict
    weights: list[numpy.ndarray]
    module: str | None = None
    registered_name: str | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.kind))


def _bad(where: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: the Keras model configuration {what}.",
                           "The file is damaged or was not written by Keras; save the model again with model.save().")


def _json(text: str | bytes, where: Path) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise _bad(where, f"is not valid JSON ({type(err).__name__})") from None


def _entries(model_config: Any, where: Path) -> tuple[str, dict, list[dict]]:
    """The model's class, its config and its layer entries, each checked to be a layer declaration."""
    if not isinstance(model_config, dict):
        raise _bad(where, "is not a mapping")
    kind, inner = model_config.get("class_name"), model_config.get("config")
    layers = inner if isinstance(inner, list) else inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):  # Keras <= 2.2 wrote a Sequential's layers as the config itself
        raise _bad(where, "has no list of layers")
    for index, entry in enumerate(layers):
        if not (isinstance(entry, dict) and isinstance(entry.get("class_name"), str)
                and isinstance(entry.get("config"), dict)):
            raise _bad(where, f"has layer entry {index} that is not a layer ({str(entry)[:60]!r})")
    return str(kind), inner if isinstance(inner, dict) else {}, layers


def _entry_name(entry: dict) -> str:
    return str(entry.get("name", entry["config"].get("name", "")))


def _history(tensor: Any) -> tuple[str, dict] | None:
    """(source layer, call kwargs) of one inbound tensor, in Keras 2's list form or Keras 3's dict form."""
    if isinstance(tensor, list) and tensor and isinstance(tensor[0], str):
        return tensor[0], tensor[3] if len(tensor) > 3 and isinstance(tensor[3], dict) else {}
    if isinstance(tensor, dict):
        history = (tensor.get("config") or {}).get("keras_history")
        if isinstance(history, list) and history and isinstance(history[0], str):
            return history[0], {}
    return None


def _inputs(entry: dict, where: Path) -> list[tuple[str, dict]]:
    """The layers one functional layer reads, with the keyword arguments of its call."""
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise CheckpointError(f"{where}: Keras layer '{_entry_name(entry)}' is called {len(nodes)} times (a shared "
                              "layer); isscompress reads one chain of layers.", "Compress a model without shared layers.")
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        tensors, kwargs = node.get("args") or [], node.get("kwargs") or {}
        tensors = tensors[0] if len(tensors) == 1 and isinstance(tensors[0], list) and tensors[0] and \
            not isinstance(tensors[0][0], str) else tensors
    else:
        tensors, kwargs = node, {}
    found = [_history(t) for t in (tensors if isinstance(tensors, list) else [])]
    if not found or None in found or not isinstance(kwargs, dict):
        raise _bad(where, f"has an inbound node of layer '{_entry_name(entry)}' that is not a tensor reference")
    for _, call in found + [("", kwargs)]:
        for key, value in call.items():
            if key not in CALL_ARGUMENTS or value not in (None, False):
                raise CheckpointError(f"{where}: Keras layer '{_entry_name(entry)}' is called with {key}="
                                      f"{str(value)[:40]}, which changes what it computes; isscompress does not read "
                                      "that.", "Compress a model whose layers are called on one input and nothing else.")
    return found


def _chain(inner: dict, layers: list[dict], where: Path) -> list[dict]:
    """A functional model's layers in data-flow order; anything but one chain from input to output is refused."""
    by_name = {_entry_name(e): e for e in layers}
    readers: dict[str, list[str]] = {name: [] for name in by_name}
    starts = []
    for name, entry in by_name.items():
        sources = _inputs(entry, where)
        if len(sources) > 1:
            raise CheckpointError(f"{where}: Keras layer '{name}' ({entry['class_name']}) reads {len(sources)} inputs; "
                                  "isscompress reads one chain of layers.", "Compress a single-input, sequential model.")
        if not sources:
            starts.append(name)
        for source, _ in sources:
            if source not in readers:
                raise _bad(where, f"has layer '{name}' reading an unknown layer '{source}'")
            readers[source].append(name)
    if len(starts) != 1:
        raise CheckpointError(f"{where}: the Keras model has {len(starts)} inputs ({', '.join(starts)}); isscompress "
                              "reads one chain of layers.", "Compress a single-input, sequential model.")
    order = [starts[0]]
    while readers[order[-1]]:
        following = readers[order[-1]]
        if len(following) > 1:
            raise CheckpointError(f"{where}: the output of Keras layer '{order[-1]}' goes to {len(following)} layers "
                                  f"({', '.join(following)}); isscompress reads one chain of layers.",
                                  "Compress a model without branches.")
        order.append(following[0])
    unused = [name for name in by_name if name not in order]
    if unused:
        raise CheckpointError(f"{where}: Keras layers {', '.join(unused)} are not on the path from the input to the "
                              "output.", "Compress a model whose layers form one chain.")
    return [by_name[name] for name in order]


def ordered_entries(model_config: Any, where: Path) -> list[dict]:
    """Layer entries in data-flow order: a Sequential's list, or a functional model's one chain."""
    kind, inner, layers = _entries(model_config, where)
    if kind == "Sequential":
        return layers
    if kind in ("Functional", "Model"):
        return _chain(inner, layers, where)
    raise CheckpointError(f"{where}: the Keras model is a {kind[:60]}, which isscompress does not read.",
                          "Save a Sequential or functional Keras model.")


def _layer(entry: dict, weights: list[numpy.ndarray]) -> KerasLayer:
    return KerasLayer(entry["class_name"], entry["config"], weights, entry.get("module"), entry.get("registered_name"))


def _weight_names(group: Any) -> list[str]:
    names = group.attrs.get("weight_names", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in numpy.atleast_1d(names)]


def _version(attrs: Any) -> str:
    raw = attrs.get("keras_version", b"")
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))[:40]


def read_h5_layers(path: Path) -> tuple[list[KerasLayer], str]:
    """The layers of a Keras ``.h5`` whole-model file, and the Keras version that wrote it ("" if unsaid)."""
    h5py = h5py_module(path)
    budget = ReadBudget(path)
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise CheckpointError(f"{path} is an HDF5 file without a Keras model configuration (weights only, or "
                                  "not Keras).", "Save the whole model with model.save('model.h5') or as .keras.")
        raw = f.attrs["model_config"]
        entries = ordered_entries(_json(raw if isinstance(raw, (str, bytes)) else str(raw), path), path)
        weights = child(f, "model_weights", path) if "model_weights" in f else f
        layers = []
        for entry in entries:
            group = child(weights, _entry_name(entry), path) if _entry_name(entry) else None
            arrays = [read_dataset(group, name, budget, path) for name in _weight_names(group)] \
                if isinstance(group, h5py.Group) else []
            layers.append(_layer(entry, arrays))
        return layers, _version(f.attrs)


def _snake(name: str) -> str:
    """Keras 3's own rule for the weight-file names of layers (``Bidirectional`` -> ``bidirectional``)."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _vars(group: Any, budget: ReadBudget, path: Path) -> list[numpy.ndarray]:
    """A Keras 3 layer's arrays: its ``vars/0..n`` then those of its cell and directions."""
    found = []
    variables = child(group, "vars", path)
    if variables is not None:
        keys = list(variables.keys())
        if not all(k.isdigit() for k in keys):
            raise _bad(path, f"has weights named {keys[:4]} under '{group.name}/vars' (Keras 3 numbers them)")
        found += [read_dataset(variables, k, budget, path) for k in sorted(keys, key=int)]
    for part in ("cell", "forward_layer", "backward_layer"):
        inner = child(group, part, path)
        if inner is not None:
            found += _vars(inner, budget, path)
    return found


def _member(archive: zipfile.ZipFile, name: str, path: Path) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path} is a .keras archive without {name}.", "Save the model again with model.save().") from None


def read_keras_zip_layers(path: Path) -> tuple[list[KerasLayer], str]:
    """The layers of a Keras 3 ``.keras`` zip (config.json, and model.weights.h5 streamed to a temporary file), and
    the Keras major version the format implies."""
    h5py = h5py_module(path)
    budget = ReadBudget(path)
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryFile(suffix=".h5") as weights_file:
        info = _member(archive, "config.json", path)
        if info.file_size > CONFIG_LIMIT:
            budget.take(budget.limit + 1, f"member config.json ({info.file_size:,} bytes of JSON)")
        budget.take(info.file_size, "member config.json")
        with archive.open(info) as handle:
            config = _json(handle.read(CONFIG_LIMIT + 1), path)
        info = _member(archive, "model.weights.h5", path)
        with archive.open(info) as handle:
            copy_bounded(handle, weights_file, info.file_size, budget, "member model.weights.h5")
        weights_file.seek(0)
        entries = ordered_entries(config, path)
        with h5py.File(weights_file, "r") as f:
            counts: dict[str, int] = {}
            layers = []
            for entry in _entries(config, path)[2]:  # weight groups are numbered in list order
                if entry["class_name"] == "InputLayer":
                    continue
                base = _snake(entry["class_name"])
                count = counts.get(base, 0)
                counts[base] = count + 1
                group = child(f, f"layers/{base if count == 0 else f'{base}_{count}'}", path)
                layers.append((_entry_name(entry), _layer(entry, _vars(group, budget, path) if group is not None else [])))
            by_name = dict(layers)
            return [by_name[_entry_name(e)] for e in entries if _entry_name(e) in by_name], "3"
