"""Where an ONNX graph's recurrent layers are, and what reads their units: the ONNX ``LSTM``/``GRU``/``RNN`` operators
with their weights, the literal sizes that name their width, and the Gemm/MatMul weights that read their output
or their final states after layout operations (Transpose, Reshape, Squeeze, Unsqueeze, Flatten, Gather of
constant indices, Concat) and elementwise ones that keep a zero zero (Relu, Tanh, Dropout, ...).

Which column of a reader holds which unit is found as the tracer finds it for a PyTorch model: a label array with
each unit's number at its place in the layer's output ``Y`` (``[steps, directions, batch, hidden]``) is moved through
the layout operations at the sizes one run of the graph gave them; each column of the reader's input must then hold
one unit. Anything else on the way is refused by its operator's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CheckpointError

RECURRENT_OPS = {"LSTM": 4, "GRU": 3, "RNN": 1}  # gate blocks per operator (ONNX orders them i, o, f, c / z, r, h)
LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
# Elementwise operations that map 0 to 0 (and need nothing else): a removed unit's zero stays zero through them
ZERO_KEEPING_OPS = ("Relu", "Tanh", "LeakyRelu", "Elu", "Selu", "Softsign", "Abs", "Neg", "Identity", "Dropout")
READER_OPS = ("Gemm", "MatMul")
ALLOWED_ATTRIBUTES = {"direction", "hidden_size", "linear_before_reset", "layout", "activations"}
# The activations that must map 0 to 0 for a removed unit to keep a zero state (LSTM: the cell input and the output
# of the cell; GRU: the candidate; RNN: its one), by their place in one direction's ``activations`` list.
ZERO_KEEPING = {"LSTM": (1, 2), "GRU": (1,), "RNN": (0,)}
ZERO_AT_ZERO = {"Tanh", "Relu"}
PROBE_DIM = 48  # a symbolic input dimension (an image width, a sequence length) in probe runs


@dataclass(frozen=True)
class Reader:
    """A weight that reads a layer's units: ``key``'s ``axis`` position ``start + k`` reads unit k of a direction."""

    key: str
    axis: int
    starts: tuple[int, ...]  # per direction


@dataclass(frozen=True)
class OnnxLayer:
    """One recurrent operator of the graph."""

    node: str  # the node's name (or its first output's, when unnamed)
    op: str
    hidden: int
    directions: int
    input_size: int
    weights: tuple[str, str, str]  # the W, R and B initializers (B may be "")
    initial: tuple[str, ...] = ()  # initializers holding initial states ([directions, batch, hidden])
    # (constant, element, factor): a shape literal that holds factor x the width (an initializer or a Constant node's
    # output: the shape of zero initial states, a Reshape's target that names the flattened directions x units)
    literals: tuple[tuple[str, int, int], ...] = ()
    readers: tuple[Reader, ...] = field(default_factory=tuple)

    @property
    def gates(self) -> int:
        return RECURRENT_OPS[self.op]


def refuse(path: Any, what: str, hint: str = "") -> CheckpointError:
    return CheckpointError(f"{path}: {what}.", hint or "isscompress follows ONNX LSTM/GRU/RNN layers whose output "
                           "reaches Gemm/MatMul weights through Transpose/Reshape/Squeeze/Unsqueeze/Flatten; "
                           "docs/formats.md lists what else is refused.")


def attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for item in node.attribute:
        if item.name == name:
            value = helper.get_attribute_value(item)
            return value.decode() if isinstance(value, bytes) else value
    return default


def constants(graph: Any) -> dict[str, np.ndarray]:
    """The value of every initializer and every Constant node's output."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and attribute(node, "value") is not None:
            values[node.output[0]] = numpy_helper.to_array(attribute(node, "value"))
    return values


def find_layers(model: Any, path: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[OnnxLayer, ...]:
    """Every recurrent operator of ``model`` with its readers; ``shapes`` are the sizes one probe run gave each
    tensor."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    values = constants(graph)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    layers = []
    for node in graph.node:
        if node.op_type not in RECURRENT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0]
        _check_node(node, name, inits, consumers, outputs, path)
        inputs = list(node.input) + [""] * 8
        hidden = int(attribute(node, "hidden_size"))
        w_shape = tuple(inits[inputs[1]].dims)
        directions = w_shape[0]
        initial, literals = _initial_states(graph, inits, values, inputs, node, name, hidden, path)
        layer = OnnxLayer(name, node.op_type, hidden, directions, w_shape[2], (inputs[1], inputs[2], inputs[3]),
                          initial, literals)
        read = [out for out in node.output if out and out in consumers]  # Y, and the final states Y_h, Y_c
        readers, reshapes = _readers(graph.node, inits, values, read, layer, shapes, path)
        layers.append(OnnxLayer(**{**layer.__dict__, "readers": readers,
                                   "literals": tuple(dict.fromkeys((*literals, *reshapes)))}))
    return tuple(layers)


def _check_node(node: Any, name: str, inits: dict, consumers: dict, outputs: set[str], path: Any) -> None:
    """Refuse, by name, a recurrent operator whose settings or wiring isscompress cannot follow exactly."""
    extra = sorted({a.name for a in node.attribute} - ALLOWED_ATTRIBUTES)
    if extra:
        raise refuse(path, f"the {node.op_type} `{name}` sets {', '.join(extra)}, which isscompress does not "
                     "follow (a unit removed must keep an exactly zero state under them)")
    activations = [a.decode() if isinstance(a, bytes) else a for a in attribute(node, "activations", [])]
    per_direction = len(activations) // max(1, 2 if attribute(node, "direction", "") == "bidirectional" else 1)
    wrong = [a for i, a in enumerate(activations) if per_direction and i % per_direction in ZERO_KEEPING[node.op_type]
             and a not in ZERO_AT_ZERO]
    if wrong:
        raise refuse(path, f"the {node.op_type} `{name}` uses {', '.join(wrong)} where a removed unit's zero state "
                     "needs an activation that maps 0 to 0 (Tanh, Relu)")
    if attribute(node, "layout", 0) != 0:
        raise refuse(path, f"the {node.op_type} `{name}` uses layout 1 (batch first)")
    inputs = list(node.input) + [""] * 8
    if inputs[7] and node.op_type == "LSTM":
        raise refuse(path, f"the LSTM `{name}` has peephole weights (P)")
    for index in (1, 2, 3):
        if inputs[index] and inputs[index] not in inits:
            raise refuse(path, f"the {node.op_type} `{name}` computes its weights ({inputs[index]}) instead of "
                         "holding them as initializers")
    given = [out for out in node.output if out in outputs]
    if given:
        raise refuse(path, f"the {node.op_type} `{name}`'s {', '.join(given)} is a graph output: its width is the "
                     "caller's")


def _initial_states(graph: Any, inits: dict, values: dict, inputs: list[str], node: Any, name: str, hidden: int,
                    path: Any) -> tuple[tuple[str, ...], tuple[tuple[str, int, int], ...]]:
    """Initial-state initializers (cut with their units), and the literals naming the width of zero states made by
    ``ConstantOfShape`` (rewritten with it)."""
    from onnx import numpy_helper

    producers = {out: n for n in graph.node for out in n.output}
    initial, literals = [], []
    for name_in in inputs[5:7] if node.op_type == "LSTM" else inputs[5:6]:
        if not name_in:
            continue
        if name_in in inits:
            initial.append(name_in)
            continue
        made = producers.get(name_in)
        if made is None:
            raise refuse(path, f"the {node.op_type} `{name}` takes its initial state {name_in} as a graph input: "
                         "its width is the caller's", "Make the initial states zeros inside the graph.")
        value = attribute(made, "value")
        if made.op_type != "ConstantOfShape" or (value is not None and numpy_helper.to_array(value).any()):
            raise refuse(path, f"the initial state of the {node.op_type} `{name}` is made by {made.op_type}, not "
                         "zeros by ConstantOfShape")
        literals.append(_width_literal(producers, values, made.input[0], hidden, name, path))
    return tuple(initial), tuple(dict.fromkeys(literals))


def _width_literal(producers: dict, values: dict, shape: str, hidden: int, name: str, path: Any
                   ) -> tuple[str, int, int]:
    """The (constant, element, 1) of a ``[directions, batch, hidden]`` shape that holds ``hidden``."""
    parts = [shape]
    concat = producers.get(shape)
    if concat is not None and concat.op_type == "Concat":
        parts = list(concat.input)
    position = 0
    for part in parts:
        if part in values:
            flat = values[part].reshape(-1)
            for offset, value in enumerate(flat):
                if position + offset == 2 and int(value) == hidden:
                    return part, offset, 1
            position += len(flat)
        else:
            position += 1  # a computed part (the batch size) is one element
    raise refuse(path, f"the shape of the zero initial state of `{name}` does not hold its width {hidden} as a "
                 "literal isscompress can rewrite")


def _readers(nodes: Any, inits: dict, values: dict, read: list[str], layer: OnnxLayer,
             shapes: dict[str, tuple[int, ...]], path: Any) -> tuple[tuple[Reader, ...], list[tuple[str, int, int]]]:
    """Follow the layer's outputs that are read (``Y`` ``[steps, directions, batch, hidden]``, the final states
    ``[directions, batch, hidden]``) through layout operations to the weights that read them, in the graph's
    (topological) node order so that a Concat sees all its labelled inputs; also the Reshape targets that name the
    unit axis's size as a literal (rewritten with the width)."""
    units = np.arange(layer.directions)[:, None] * layer.hidden + np.arange(layer.hidden) + 1  # 0: no unit
    labelled = {name: np.broadcast_to(units[:, None, :], shapes[name]).copy() for name in read}
    readers, literals = [], []
    for node in nodes:
        if not any(name in labelled for name in node.input):
            continue
        value = labelled.get(node.input[0])
        if node.op_type in LAYOUT_OPS and value is not None:
            moved = np.transpose(value, attribute(node, "perm")) if node.op_type == "Transpose" else value
            labelled[node.output[0]] = moved.reshape(shapes[node.output[0]])
            if node.op_type == "Reshape":
                literals += _reshape_literals(node, labelled[node.output[0]], values, layer.hidden)
        elif node.op_type in ZERO_KEEPING_OPS and value is not None:
            labelled[node.output[0]] = value
        elif node.op_type == "Gather" and value is not None and node.input[1] in values:  # h_n[-1]
            taken = np.take(value, values[node.input[1]], axis=attribute(node, "axis", 0))
            labelled[node.output[0]] = taken.reshape(shapes[node.output[0]])
        elif node.op_type == "Concat":  # both directions' final states side by side, or units beside other features
            parts = [labelled.get(name, np.zeros(shapes[name], np.int64)) for name in node.input]
            labelled[node.output[0]] = np.concatenate(parts, axis=attribute(node, "axis"))
        elif node.op_type in READER_OPS and value is not None and node.input[1] in inits \
                and node.input[1] not in labelled:
            readers.append(_reader(node, value, inits, layer, path))
        elif node.op_type != "Shape":  # Shape reads sizes only
            raise refuse(path, f"the output of the {layer.op} `{layer.node}` reaches {node.op_type} "
                         f"`{node.name or node.output[0]}`, which isscompress does not follow")
    if not readers:
        raise refuse(path, f"no weight reads the output of the {layer.op} `{layer.node}`")
    return tuple(dict.fromkeys(readers)), literals


def _reshape_literals(node: Any, labels: np.ndarray, values: dict, hidden: int) -> list[tuple[str, int, int]]:
    """A constant Reshape target's elements that give an axis carrying units its size (0 and -1 follow by
    themselves)."""
    target = values.get(node.input[1]) if len(node.input) > 1 else None
    if target is None:
        return []
    found = []
    for axis, size in enumerate(target.reshape(-1)):
        carries_units = axis < labels.ndim and labels.shape[axis] > 1 and (np.diff(labels, axis=axis) != 0).any()
        if size > 0 and carries_units and size % hidden == 0:
            found.append((node.input[1], axis, int(size) // hidden))
    return found


def _reader(node: Any, value: np.ndarray, inits: dict, layer: OnnxLayer, path: Any) -> Reader:
    """The reader's axis and where each direction's units start along it, checked column by column."""
    if node.op_type == "Gemm" and attribute(node, "transA", 0):
        raise refuse(path, f"the Gemm `{node.name}` reading `{layer.node}` transposes its input (transA)")
    columns = value.reshape(-1, value.shape[-1])
    unit = columns.max(axis=0)
    if not (columns == unit).all():
        raise refuse(path, f"a column of the input of {node.op_type} `{node.name or node.output[0]}` mixes units "
                     f"of `{layer.node}` (a reshape that is not a flattening of directions and units)")
    starts = []
    for d in range(layer.directions):
        where = np.nonzero((unit - 1) // layer.hidden == d)[0] if (unit > 0).any() else np.array([])
        first = int(where[0]) if len(where) else -1
        if len(where) != layer.hidden or not (unit[where] == d * layer.hidden + np.arange(layer.hidden) + 1).all() \
                or not (where == first + np.arange(layer.hidden)).all():
            raise refuse(path, f"the units of `{layer.node}` do not reach {node.op_type} `{node.name}` as one "
                         "run of columns per direction")
        starts.append(first)
    axis = 0 if node.op_type == "MatMul" or not attribute(node, "transB", 0) else 1
    return Reader(node.input[1], axis, tuple(starts))
