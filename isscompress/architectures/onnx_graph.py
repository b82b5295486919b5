"""An ONNX graph's recurrent layers as an architecture: the ISS groups of each ONNX ``LSTM``/``GRU``/``RNN`` operator
and the weights that read it, shrunk into a smaller ONNX graph that ONNX Runtime runs.

The checkpoint's tensors are the grouped initializers, each direction's slice of ``W``/``R``/``B`` (and of constant
initial states) under its own name (``W[0]``, ``W[1]``), so that a unit is rows and columns along one axis as for
every other architecture; everything else stays in the graph. A shrunk graph is the same graph with those
initializers rebuilt, ``hidden_size`` set, and every literal that named the old width (the shape of zero initial
states) rewritten; it is checked in ONNX Runtime against the original with the removed units zeroed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..core.architecture import LayerInfo
from ..core.groups import GroupSet, Member
from ..errors import CheckpointError, ShapeError
from ..onnx_runtime import ort_session
from .onnx_layers import PROBE_DIM, OnnxLayer

KIND = "onnx-graph"
EQUATIONS = "ONNX's LSTM/GRU/RNN operators (gates i, o, f, c / z, r, h), default activations"


def split_key(name: str, direction: int) -> str:
    """The canonical name of one direction's slice of a per-direction initializer."""
    return f"{name}[{direction}]"


@dataclass(frozen=True)
class OnnxGraph:
    """A parsed ONNX model (``model``: an ``onnx.ModelProto``) and its recurrent layers."""

    model: Any
    layers: tuple[OnnxLayer, ...]
    kind: ClassVar[str] = KIND
    equations: ClassVar[str] = EQUATIONS
    widths: dict[str, int] = field(default_factory=dict)  # layer -> its width, after a shrink

    @property
    def cell(self) -> str:
        return "+".join(dict.fromkeys(f"ONNX {layer.op}" for layer in self.layers))

    def width(self, layer: OnnxLayer) -> int:
        return self.widths.get(layer.node, layer.hidden)

    # ----- the groups ---------------------------------------------------------------------------------------------
    def group_sets(self) -> tuple[GroupSet, ...]:
        sets = []
        for layer in self.layers:
            hidden, gates = self.width(layer), layer.gates
            w, r, b = layer.weights
            for d in range(layer.directions):
                members = [Member(split_key(w, d), 0, tuple(g * hidden for g in range(gates))),
                           Member(split_key(r, d), 0, tuple(g * hidden for g in range(gates))),
                           Member(split_key(r, d), 1, (0,))]
                if b:
                    members.append(Member(split_key(b, d), 0, tuple(g * hidden for g in range(2 * gates))))
                members += [Member(split_key(s, d), 1, (0,)) for s in layer.initial]
                members += [Member(reader.key, reader.axis, (self._reader_start(reader, d, layer),))
                            for reader in layer.readers]
                name = layer.node if d == 0 else f"{layer.node} (reverse)"
                sets.append(GroupSet(name, hidden, tuple(members), layer.node, label=name))
        return tuple(sets)

    def _reader_start(self, reader: Any, direction: int, layer: OnnxLayer) -> int:
        """Where direction ``direction``'s units start in a reader at this width: each run of units before it has
        lost the removed ones."""
        runs_before = sum(1 for start in reader.starts if start < reader.starts[direction])
        return reader.starts[direction] - runs_before * (layer.hidden - self.width(layer))

    def canonical(self, initializers: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
        """The grouped tensors of a graph's initializers: per-direction slices, and the readers whole."""
        state = {}
        for layer in self.layers:
            for name in (*[n for n in layer.weights if n], *layer.initial):
                for d in range(layer.directions):
                    state[split_key(name, d)] = torch.from_numpy(np.array(initializers[name][d]))
            for reader in layer.readers:
                state[reader.key] = torch.from_numpy(np.array(initializers[reader.key]))
        return state

    def with_kept(self, kept: Mapping[str, int] | Mapping[str, Tensor]) -> "OnnxGraph":
        counts = {name: value if isinstance(value, int) else int(value.numel()) for name, value in kept.items()}
        return replace(self, widths={**self.widths, **{layer.node: counts.get(layer.node, self.width(layer))
                                                       for layer in self.layers}})

    def check(self, state: Mapping[str, Tensor]) -> None:
        expected = self._shapes()
        wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != expected[k])
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if wrong or missing or unexpected:
            raise ShapeError(f"The tensors do not fit the ONNX graph: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}, of another shape {wrong[:4]}.", "Shrink the .onnx file itself.")

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """Every grouped tensor's shape at the current widths."""
        inits = {t.name: tuple(t.dims) for t in self.model.graph.initializer}
        shapes = {}
        for layer in self.layers:
            h, g, w = self.width(layer), layer.gates, layer.weights
            for d in range(layer.directions):
                shapes[split_key(w[0], d)] = (g * h, layer.input_size)
                shapes[split_key(w[1], d)] = (g * h, h)
                if w[2]:
                    shapes[split_key(w[2], d)] = (2 * g * h,)
                for s in layer.initial:
                    shapes[split_key(s, d)] = (inits[s][1], h)
            for reader in layer.readers:
                shape = list(inits[reader.key])
                shape[reader.axis] -= layer.directions * (layer.hidden - h)
                shapes[reader.key] = tuple(shape)
        return shapes

    # ----- the graph ----------------------------------------------------------------------------------------------
    def materialize(self, state: Mapping[str, Tensor]) -> Any:
        """A copy of the graph holding ``state``'s tensors at this architecture's widths."""
        from onnx import helper, numpy_helper

        model = copy.deepcopy(self.model)
        graph = model.graph
        del graph.value_info[:]  # shape annotations of the old widths; ONNX Runtime infers them again
        arrays: dict[str, np.ndarray] = {}
        for layer in self.layers:
            for name in (*[n for n in layer.weights if n], *layer.initial):
                arrays[name] = np.stack([state[split_key(name, d)].numpy() for d in range(layer.directions)])
            for reader in layer.readers:
                arrays[reader.key] = state[reader.key].numpy()
        literals: dict[str, list[tuple[int, int]]] = {}  # constant -> (element, new value)
        for layer in self.layers:
            for name, index, factor in layer.literals:
                literals.setdefault(name, []).append((index, factor * self.width(layer)))

        def rewritten(tensor: Any) -> Any:
            value = arrays.get(tensor.name)
            if tensor.name in literals:
                value = numpy_helper.to_array(tensor).copy()
                for index, width in literals[tensor.name]:
                    value.reshape(-1)[index] = width
            if value is None:
                return None
            return numpy_helper.from_array(value.astype(numpy_helper.to_array(tensor).dtype), tensor.name)

        for tensor in graph.initializer:
            new = rewritten(tensor)
            if new is not None:
                tensor.CopyFrom(new)
        nodes = {layer.node: layer for layer in self.layers}
        for node in graph.node:
            layer = nodes.get(node.name or node.output[0])
            for item in node.attribute:
                if layer is not None and item.name == "hidden_size":
                    item.CopyFrom(helper.make_attribute("hidden_size", self.width(layer)))
                if node.op_type == "Constant" and item.name == "value" and node.output[0] in literals:
                    item.t.name = node.output[0]
                    item.t.CopyFrom(rewritten(item.t))
        return model

    def build(self, state: Mapping[str, Tensor], dropout: float = 0.0, variational: bool = False) -> nn.Module:
        return OnnxRuntimeGraph(self.materialize(state))

    def probe_inputs(self, steps: int = 6, batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
        return probe_inputs(self.model, seed)

    def probe_outputs(self, state: Mapping[str, Tensor]) -> list[Tensor | None]:
        return list(self.build({k: v.float() for k, v in state.items()})(*self.probe_inputs()))

    def kept_outputs(self, outputs: list[Tensor | None], kept: Mapping[str, Tensor]) -> list[Tensor | None]:
        return outputs  # a layer's output is never a graph output (refused when reading)

    # ----- costs --------------------------------------------------------------------------------------------------
    def layer_info(self) -> tuple[LayerInfo, ...]:
        return tuple(LayerInfo(index, layer.op, layer.input_size, self.width(layer), layer.directions, 0, 1,
                               layer.node) for index, layer in enumerate(self.layers))

    def parameter_counts(self) -> dict[str, int]:
        shapes = self._shapes()
        grouped = {name for layer in self.layers for name in (*layer.weights, *layer.initial) if name}
        readers = {reader.key for layer in self.layers for reader in layer.readers}
        recurrent = sum(math.prod(shape) for key, shape in shapes.items() if key.rsplit("[", 1)[0] in grouped)
        read = sum(math.prod(shapes[key]) for key in readers)
        other = sum(math.prod(t.dims) for t in self.model.graph.initializer
                    if t.name not in grouped | readers and t.data_type in (1, 10, 11, 16))  # float initializers
        return {"recurrent": recurrent, "readers": read, "other": other}

    def macs_per_token(self) -> dict[str, int]:
        """Multiply-adds per time step of the recurrent layers and of the weights that read them once per step;
        the rest of the graph (convolutions before the layers) is not counted: see docs/formats.md."""
        recurrent = sum(layer.directions * layer.gates * self.width(layer) * (layer.input_size + self.width(layer))
                        for layer in self.layers)
        shapes = self._shapes()
        readers = {reader.key for layer in self.layers for reader in layer.readers}
        return {"recurrent": recurrent, "readers": sum(math.prod(shapes[key]) for key in readers)}

    def to_dict(self) -> dict[str, Any]:
        return {"widths": {layer.node: self.width(layer) for layer in self.layers}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OnnxGraph":
        raise CheckpointError("An ONNX graph's architecture is read from its .onnx file, not from metadata.",
                              "Open the .onnx file itself.")


class OnnxRuntimeGraph(nn.Module):
    """An ONNX model in ONNX Runtime behind ``forward(*inputs) -> tuple of tensors``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.session = ort_session(model.SerializeToString())
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        arrays = self.session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(self.names, inputs)})
        return tuple(torch.from_numpy(np.asarray(a)) for a in arrays)


def probe_inputs(model: Any, seed: int = 0) -> tuple[Tensor, ...]:
    """A deterministic input per graph input: its declared shape, a symbolic dimension ``PROBE_DIM`` long."""
    from onnx import helper

    inits = {t.name for t in model.graph.initializer}
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else PROBE_DIM for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            inputs.append(torch.rand(shape, generator=generator).to(torch.from_numpy(np.zeros(0, dtype)).dtype))
        else:
            inputs.append(torch.zeros(shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype))
    return tuple(inputs)
