"""An ONNX graph as a trainable PyTorch module, so that a model shipped only as ``.onnx`` (its training code gone) can
be fine-tuned with ISS like any PyTorch model, and its trained weights written back into the same graph.

A small importer of the operators recurrent models use, not a general converter: each node runs as the PyTorch
operation that computes what the ONNX operator specifies; an ONNX ``LSTM``/``GRU``/``RNN`` becomes PyTorch's module of
that kind (gate blocks reordered: ONNX's i, o, f, c and z, r, h are PyTorch's i, f, g, o and r, z, n), so the tracer
finds its units and their readers as in any model. Float initializers are parameters (a BatchNormalization's
running statistics buffers); everything else is constant. An operator or a setting it does not compute is refused by
name. ``isscompress.onnx_module(path)`` (io.onnx_models) reads a file and checks the module against ONNX Runtime on
a probe input before anything trains.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .onnx_layers import RECURRENT_OPS, attribute, refuse
from .onnx_ops import OPS

# ONNX's gate blocks in PyTorch's order, per operator (ONNX i, o, f, c -> PyTorch i, f, g, o; z, r, h -> r, z, n)
TO_TORCH = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2], "RNN": [0]}
TO_ONNX = {op: [order.index(i) for i in range(len(order))] for op, order in TO_TORCH.items()}
RNN_SETTINGS = {"direction", "hidden_size", "linear_before_reset", "layout", "activations"}


def _blocks(t: Tensor, order: list[int]) -> Tensor:
    return torch.cat([t.chunk(len(order))[i] for i in order])


def _key(name: str, taken: set[str]) -> str:
    """An initializer's name as a module attribute (no dots), unique."""
    key = re.sub(r"\W", "_", name) or "w"
    key = key if not key[0].isdigit() else f"w_{key}"
    while key in taken:
        key += "_"
    taken.add(key)
    return key


def _plain(op: str, activations: list[str]) -> bool:
    """Whether the activations are the ones PyTorch's module of that kind computes."""
    if not activations:
        return True
    if op == "RNN":
        return len(set(activations)) == 1 and activations[0] in ("Tanh", "Relu")
    per_direction = ["Sigmoid", "Tanh", "Tanh"] if op == "LSTM" else ["Sigmoid", "Tanh"]
    return activations in (per_direction, per_direction * 2)


def _linear_module(node: Any, arrays: dict[str, np.ndarray], uses: Counter) -> nn.Linear | None:
    """``nn.Linear`` for a Gemm (``transB``, unscaled) or a MatMul whose weight is an initializer only it reads, so
    that the tracer and the report see a layer reading the units; None for any other product."""
    inputs = list(node.input) + [""]
    weight = arrays.get(inputs[1])
    if weight is None or weight.ndim != 2 or uses[inputs[1]] != 1:
        return None
    if node.op_type == "Gemm":
        bias = arrays.get(inputs[2]) if inputs[2] else None
        plain = attribute(node, "transB", 0) and not attribute(node, "transA", 0) and attribute(
            node, "alpha", 1.0) == 1.0 and attribute(node, "beta", 1.0) == 1.0
        if not plain or (inputs[2] and (bias is None or bias.ndim != 1 or uses[inputs[2]] != 1)):
            return None
    else:
        weight, bias = weight.T, None
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight.copy()))
        if bias is not None:
            linear.bias.copy_(torch.from_numpy(bias.copy()))
    return linear


def _recurrent_module(node: Any, arrays: dict[str, np.ndarray], path: Any) -> nn.RNNBase:
    """PyTorch's module for an ONNX recurrent node, holding its weights in PyTorch's gate order."""
    name, op = node.name or node.output[0], node.op_type
    inputs = list(node.input) + [""] * 8
    extra = sorted({a.name for a in node.attribute} - RNN_SETTINGS)
    direction = attribute(node, "direction", "forward")
    activations = [a.decode() if isinstance(a, bytes) else a for a in attribute(node, "activations", [])]
    problems = extra + (["direction reverse"] if direction == "reverse" else []) + (
        ["layout 1"] if attribute(node, "layout", 0) else []) + (
        ["sequence_lens"] if inputs[4] else []) + (["peepholes"] if op == "LSTM" and inputs[7] else []) + (
        ["linear_before_reset 0"] if op == "GRU" and not attribute(node, "linear_before_reset", 0) else []) + (
        [f"activations {', '.join(activations)}"] if not _plain(op, activations) else [])
    if problems:
        raise refuse(path, f"the {op} `{name}` has {', '.join(problems)}, which PyTorch's {op} does not compute",
                     "Fine-tune the model it was exported from; isscompress can still shrink this .onnx.")
    computed = [n for n in inputs[1:4] if n and n not in arrays]
    if computed:
        raise refuse(path, f"the {op} `{name}` computes its weights ({', '.join(computed)}) instead of holding them "
                     "as initializers", "Export the model with constant folding (torch.onnx.export's default).")
    w, r = arrays[inputs[1]], arrays[inputs[2]]
    directions, rows, width = w.shape
    hidden = int(attribute(node, "hidden_size", rows // RECURRENT_OPS[op]))
    kwargs: dict[str, Any] = dict(bias=True, bidirectional=directions == 2)
    if op == "RNN":
        kwargs["nonlinearity"] = (activations or ["Tanh"])[0].lower()
    module = getattr(nn, op)(width, hidden, **kwargs)
    order = TO_TORCH[op]
    b = arrays[inputs[3]] if inputs[3] else np.zeros((directions, 2 * rows), dtype=w.dtype)
    with torch.no_grad():
        for d, suffix in enumerate(("", "_reverse")[:directions]):
            getattr(module, f"weight_ih_l0{suffix}").copy_(_blocks(torch.from_numpy(w[d].copy()), order))
            getattr(module, f"weight_hh_l0{suffix}").copy_(_blocks(torch.from_numpy(r[d].copy()), order))
            getattr(module, f"bias_ih_l0{suffix}").copy_(_blocks(torch.from_numpy(b[d][:rows].copy()), order))
            getattr(module, f"bias_hh_l0{suffix}").copy_(_blocks(torch.from_numpy(b[d][rows:].copy()), order))
    return module


class OnnxModule(nn.Module):
    """``forward(*graph inputs)`` computes what the graph computes (its outputs: one tensor, or a tuple)."""

    def __init__(self, model: Any, path: Any = "the ONNX graph") -> None:
        super().__init__()
        from onnx import numpy_helper

        self.model, self.path = model, path
        graph = model.graph
        unknown = sorted({n.op_type for n in graph.node if n.op_type not in OPS and n.op_type not in RECURRENT_OPS})
        if unknown:
            raise refuse(path, f"its operators {', '.join(unknown)} are not among those isscompress runs in PyTorch "
                         "to fine-tune a graph", "Fine-tune the model it was exported from; isscompress can still "
                         "shrink this .onnx.")
        arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.recurrent, self.linears, self.weights = nn.ModuleDict(), nn.ModuleDict(), nn.ParameterDict()
        taken: set[str] = set()
        self.node_keys: dict[int, str] = {}
        held: set[str] = set()
        uses = Counter(name for n in graph.node for name in n.input)  # how many inputs read each tensor
        for index, node in enumerate(graph.node):
            linear = _linear_module(node, arrays, uses) if node.op_type in ("Gemm", "MatMul") else None
            if node.op_type in RECURRENT_OPS or linear is not None:
                self.node_keys[index] = _key(node.name or node.output[0], taken)
            if node.op_type in RECURRENT_OPS:
                self.recurrent[self.node_keys[index]] = _recurrent_module(node, arrays, path)
                held.update(name for name in list(node.input)[1:4] if name)
            elif linear is not None:
                self.linears[self.node_keys[index]] = linear
                held.update(name for name in list(node.input)[1:3] if name)
        self.held = frozenset(held)  # what the recurrent and linear modules hold, in PyTorch's layout
        statistics = {name for n in graph.node if n.op_type == "BatchNormalization" for name in list(n.input)[3:5]}
        self.keys: dict[str, str] = {}  # initializer -> attribute
        self.values: dict[str, Tensor] = {}  # constants: integer initializers, Constant nodes' values
        for name, array in arrays.items():
            if name in self.held:
                continue
            tensor = torch.from_numpy(array.copy())
            if not tensor.is_floating_point():
                self.values[name] = tensor
            elif name in statistics:
                self.keys[name] = _key(name, taken)
                self.register_buffer(self.keys[name], tensor)
            else:
                self.keys[name] = _key(name, taken)
                self.weights[self.keys[name]] = nn.Parameter(tensor)
        for node in graph.node:
            if node.op_type == "Constant":
                self.values[node.output[0]] = torch.from_numpy(np.array(
                    numpy_helper.to_array(attribute(node, "value"))).copy())

    def tensor(self, name: str, device: torch.device) -> Tensor:
        """An initializer or constant: a weight where the module is; a float constant on ``device`` (the inputs'),
        shape arithmetic on the CPU, where the sizes it computes live."""
        if name in self.keys:
            return self.weights[self.keys[name]] if self.keys[name] in self.weights else getattr(self, self.keys[name])
        value = self.values[name]
        return value.to(device) if value.is_floating_point() else value

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        env: dict[str, Any] = {i.name: x for i, x in zip(self.model.graph.input, inputs)}
        device = inputs[0].device if inputs else torch.device("cpu")
        for index, node in enumerate(self.model.graph.node):
            args = [env[n] if n in env else self.tensor(n, device) if n and n not in self.held else None
                    for n in node.input]
            if node.op_type in RECURRENT_OPS:
                outputs = _run_recurrent(self.recurrent[self.node_keys[index]], node.op_type, args)
            elif index in self.node_keys:
                outputs = self.linears[self.node_keys[index]](args[0])
            else:
                outputs = OPS[node.op_type](node, args, self)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            env.update((name, value) for name, value in zip(node.output, outputs) if name)
        results = tuple(env[o.name] for o in self.model.graph.output)
        return results[0] if len(results) == 1 else results

    def to_onnx(self, state: dict[str, Tensor] | None = None) -> Any:
        """The graph holding this module's weights (or ``state``, this module's state-dict names), gates back in
        ONNX's order."""
        from onnx import numpy_helper

        state = {k: v.detach().cpu() for k, v in (state or self.state_dict()).items()}
        values: dict[str, np.ndarray] = {}
        for index, node in enumerate(self.model.graph.node):
            if index in self.node_keys and node.op_type not in RECURRENT_OPS:  # a linear layer's weight and bias
                names, prefix = list(node.input) + [""], f"linears.{self.node_keys[index]}."
                weight = state[prefix + "weight"]
                values[names[1]] = (weight if node.op_type == "Gemm" else weight.t()).numpy()
                if names[2] and node.op_type == "Gemm":
                    values[names[2]] = state[prefix + "bias"].numpy()
            if node.op_type not in RECURRENT_OPS:
                continue
            prefix, order = f"recurrent.{self.node_keys[index]}.", TO_ONNX[node.op_type]
            directions = ("", "_reverse")[:2 if self.recurrent[self.node_keys[index]].bidirectional else 1]
            part = {p: torch.stack([_blocks(state[f"{prefix}{p}_l0{s}"], order) for s in directions])
                    for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            names = list(node.input) + [""] * 4
            values[names[1]], values[names[2]] = part["weight_ih"].numpy(), part["weight_hh"].numpy()
            if names[3]:
                values[names[3]] = torch.cat([part["bias_ih"], part["bias_hh"]], 1).numpy()
        for name, key in self.keys.items():
            values[name] = state[f"weights.{key}" if f"weights.{key}" in state else key].numpy()
        model = copy.deepcopy(self.model)
        for initializer in model.graph.initializer:
            if initializer.name in values:
                initializer.CopyFrom(numpy_helper.from_array(values[initializer.name].astype(
                    numpy_helper.to_array(initializer).dtype), initializer.name))
        return model


def _run_recurrent(module: nn.RNNBase, op: str, args: list) -> tuple[Tensor, ...]:
    """ONNX's outputs of a recurrent node: Y ``[steps, directions, batch, hidden]``, Y_h (and Y_c)."""
    x = args[0]  # initial states made from shapes (ConstantOfShape) are made on the CPU: brought to x's device
    initial = [a.to(x.device) if a is not None else None for a in (args + [None] * 8)[5:7 if op == "LSTM" else 6]]
    state = None
    if initial[0] is not None:
        state = (initial[0], initial[1] if initial[1] is not None else torch.zeros_like(initial[0])) \
            if op == "LSTM" else initial[0]
    y, final = module(x, state)
    steps, batch = y.shape[:2]
    y = y.view(steps, batch, -1, module.hidden_size).transpose(1, 2)
    return (y, *final) if op == "LSTM" else (y, final)


def check_against_runtime(module: OnnxModule) -> float:
    """The module's outputs against ONNX Runtime's on the graph's probe input; refused past float32 tolerance."""
    from ..onnx_runtime import ort_session
    from .onnx_graph import probe_inputs

    inputs = probe_inputs(module.model)
    session = ort_session(module.model.SerializeToString())
    expected = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})
    with torch.no_grad():
        got = module.eval()(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    scale = max(float(np.abs(e).max()) for e in expected) or 1.0
    gap = max(float(np.abs(g.numpy() - e).max()) for g, e in zip(got, expected))
    if gap > 1e-4 * max(1.0, scale):
        raise refuse(module.path, f"run in PyTorch, it differs from ONNX Runtime by {gap:.3g} (outputs up to "
                     f"{scale:.3g}) on a probe input", "Fine-tune the model it was exported from; isscompress can "
                     "still shrink this .onnx.")
    return gap
