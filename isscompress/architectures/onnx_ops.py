"""What each ONNX operator computes, as PyTorch operations: the table :class:`~.onnx_torch.OnnxModule` runs a graph
by (``OPS[op_type](node, inputs, module)``). Operators a recurrent model's graph uses around its layers — arithmetic,
convolutions, layout and shape arithmetic, normalisation — and nothing else: a graph with another is refused."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .onnx_layers import attribute, refuse

DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 11: torch.float64}


def _ints(t: Any) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, Tensor) else t)]


def _axes(node: Any, args: list, default: Any = None) -> Any:
    return _ints(args[1]) if len(args) > 1 and args[1] is not None else attribute(node, "axes", default)


def _reshape(node: Any, args: list, _: Any) -> Tensor:
    x, shape = args[0], _ints(args[1])
    return x.reshape([x.shape[i] if s == 0 and not attribute(node, "allowzero", 0) else s for i, s in enumerate(shape)])


def _gather(node: Any, args: list, _: Any) -> Tensor:
    x, index, axis = args[0], args[1].long().to(args[0].device), attribute(node, "axis", 0)
    index = torch.where(index < 0, index + x.shape[axis], index)
    picked = torch.index_select(x, axis, index.reshape(-1))
    return picked.reshape([*x.shape[:axis % x.dim()], *index.shape, *x.shape[axis % x.dim() + 1:]])


def _gemm(node: Any, args: list, _: Any) -> Tensor:
    a, b = args[0], args[1]
    a = a.t() if attribute(node, "transA", 0) else a
    alpha, beta = attribute(node, "alpha", 1.0), attribute(node, "beta", 1.0)
    c = args[2] if len(args) > 2 and args[2] is not None else None
    if attribute(node, "transB", 0) and alpha == 1.0 and (c is None or beta == 1.0):
        return F.linear(a, b, c)  # as nn.Linear computes it: the tracer reads the weight's columns
    product = alpha * (a @ (b.t() if attribute(node, "transB", 0) else b))
    return product if c is None else product + beta * c


def _conv(node: Any, args: list, _: Any) -> Tensor:
    x, weight, bias = args[0], args[1], args[2] if len(args) > 2 else None
    dims = weight.dim() - 2
    pads = attribute(node, "pads", [0] * 2 * dims)
    if attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise refuse("the ONNX graph", f"the Conv `{node.name}` pads automatically (auto_pad)")
    if pads[:dims] != pads[dims:]:
        x, pads = F.pad(x, [p for i in reversed(range(dims)) for p in (pads[i], pads[i + dims])]), [0] * 2 * dims
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return conv(x, weight, bias, attribute(node, "strides", [1] * dims), pads[:dims],
                attribute(node, "dilations", [1] * dims), attribute(node, "group", 1))


def _pool(node: Any, args: list, _: Any) -> Tensor:
    """MaxPool / AveragePool over 1 or 2 spatial axes, symmetric pads."""
    x, kernel = args[0], attribute(node, "kernel_shape")
    dims = len(kernel)
    pads = attribute(node, "pads", [0] * 2 * dims)
    if pads[:dims] != pads[dims:] or attribute(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID") or dims > 2 \
            or len([o for o in node.output if o]) > 1:
        raise refuse("the ONNX graph", f"the {node.op_type} `{node.name}` pads unevenly or automatically, pools over "
                     "more than 2 axes or returns its indices")
    strides, ceil = attribute(node, "strides", [1] * dims), bool(attribute(node, "ceil_mode", 0))
    if node.op_type == "MaxPool":
        pool = F.max_pool1d if dims == 1 else F.max_pool2d
        return pool(x, kernel, strides, pads[:dims], attribute(node, "dilations", [1] * dims), ceil)
    pool = F.avg_pool1d if dims == 1 else F.avg_pool2d
    return pool(x, kernel, strides, pads[:dims], ceil, bool(attribute(node, "count_include_pad", 0)))


def _slice(node: Any, args: list, _: Any) -> Tensor:
    """Slice (opset 10+: starts, ends, axes and steps as inputs; before it, as attributes)."""
    x = args[0]
    starts, ends = (_ints(args[1]), _ints(args[2])) if len(args) > 2 else (attribute(node, "starts"),
                                                                           attribute(node, "ends"))
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else attribute(node, "axes", range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    if any(step < 1 for step in steps):
        raise refuse("the ONNX graph", f"the Slice `{node.name}` steps backwards")
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _binary(function: Callable) -> Callable:
    return lambda node, args, _: function(args[0], args[1])


def _unary(function: Callable) -> Callable:
    return lambda node, args, _: function(args[0])


OPS: dict[str, Callable[[Any, list, Any], Any]] = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul),
    "Div": _binary(lambda a, b: torch.div(a, b, rounding_mode=None if a.is_floating_point() else "trunc")),
    "MatMul": _binary(torch.matmul), "Gemm": _gemm, "Conv": _conv,
    "Relu": _unary(torch.relu), "Tanh": _unary(torch.tanh), "Sigmoid": _unary(torch.sigmoid),
    "Identity": _unary(lambda x: x), "Dropout": _unary(lambda x: x), "Neg": _unary(torch.neg), "Abs": _unary(torch.abs),
    "LeakyRelu": lambda node, args, _: F.leaky_relu(args[0], attribute(node, "alpha", 0.01)),
    "Constant": lambda node, args, module: module.values[node.output[0]],
    "Shape": lambda node, args, _: torch.tensor(args[0].shape[attribute(node, "start", 0):attribute(node, "end", None)],
                                                dtype=torch.int64),
    "Gather": _gather, "Reshape": _reshape, "Slice": _slice, "MaxPool": _pool, "AveragePool": _pool,
    "Expand": lambda node, args, _: torch.broadcast_to(args[0], torch.broadcast_shapes(args[0].shape,
                                                                                      tuple(_ints(args[1])))),
    "Unsqueeze": lambda node, args, _: args[0].reshape(_unsqueezed(args[0].shape, _axes(node, args))),
    "Squeeze": lambda node, args, _: args[0].squeeze(tuple(_axes(node, args, range(args[0].dim())))) if _axes(
        node, args) is not None else args[0].squeeze(),
    "Concat": lambda node, args, _: torch.cat([a for a in args if a is not None], attribute(node, "axis")),
    "Transpose": lambda node, args, _: args[0].permute(attribute(node, "perm", list(reversed(range(args[0].dim()))))),
    "Flatten": lambda node, args, _: args[0].reshape(int(np.prod(args[0].shape[:attribute(node, "axis", 1)])), -1),
    "ConstantOfShape": lambda node, args, _: _filled(node, args[0]),
    "Cast": lambda node, args, _: args[0].to(DTYPES[attribute(node, "to")]),
    "Softmax": lambda node, args, _: torch.softmax(args[0], attribute(node, "axis", -1)),
    "LogSoftmax": lambda node, args, _: torch.log_softmax(args[0], attribute(node, "axis", -1)),
    "BatchNormalization": lambda node, args, _: F.batch_norm(args[0], args[3], args[4], args[1], args[2], False, 0.0,
                                                             attribute(node, "epsilon", 1e-5)),
}


def _unsqueezed(shape: torch.Size, axes: list[int]) -> list[int]:
    out = list(shape)
    rank = len(shape) + len(axes)
    for axis in sorted(a % rank for a in axes):
        out.insert(axis, 1)
    return out


def _filled(node: Any, shape: Tensor) -> Tensor:
    from onnx import numpy_helper

    value = attribute(node, "value")
    array = numpy_helper.to_array(value) if value is not None else np.zeros(1, dtype=np.float32)
    fill, dtype = float(array.reshape(-1)[0]), torch.from_numpy(array.copy()).dtype
    if fill == 0:  # zero initial states, as the tracer knows them (a removed unit starts at zero)
        return torch.zeros(_ints(shape), dtype=dtype)
    return torch.full(_ints(shape), fill, dtype=dtype)
