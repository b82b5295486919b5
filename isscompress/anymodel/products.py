"""Multiply-adds of products of two computed tensors: attention scores (``q @ k.T``), their weighted sums
(``softmax(s) @ v``), ``einsum`` and ``scaled_dot_product_attention``. Their cost grows with the product of two
sequence lengths, so no weight shape gives it: the tracer counts them as the model runs its example inputs, and the
report gives them as their own part, at those inputs' lengths."""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import Tensor
from torch.utils._pytree import tree_flatten

PRODUCT_FUNCTIONS = frozenset("matmul __matmul__ __rmatmul__ mm bmm baddbmm einsum scaled_dot_product_attention".split())


def product_macs(name: str, args: tuple, kwargs: dict, out: Any, is_weight: Callable[[Tensor], bool]) -> int:
    """Multiply-adds of one call of ``name`` when it multiplies two computed tensors (no operand ``is_weight``);
    0 for any other call (a product with a weight is a layer, costed from its shape)."""
    if name not in PRODUCT_FUNCTIONS or not isinstance(out, Tensor):
        return 0
    tensors = [v for v in tree_flatten((args, kwargs))[0] if isinstance(v, Tensor)]
    if len(tensors) < 2 or any(is_weight(t) for t in tensors):
        return 0
    if name == "einsum":
        return _einsum_macs(args)
    if name == "scaled_dot_product_attention":
        query, key, value = tensors[:3]
        pairs = math.prod(query.shape[:-1]) * key.shape[-2]
        return pairs * (query.shape[-1] + value.shape[-1])  # the scores, then their weighted sum of values
    first = tensors[1] if name in ("__rmatmul__", "baddbmm") else tensors[0]  # baddbmm(input, a, b): a @ b
    return out.numel() * first.shape[-1]


def _einsum_macs(args: tuple) -> int:
    """Every index of the equation runs once per multiply-add: the product of all their sizes."""
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    sizes: dict[str, int] = {}
    for letters, operand in zip(equation.replace(" ", "").split("->")[0].split(","), operands):
        if "." in letters or len(letters) != operand.dim():  # an ellipsis: its axes are not named
            return 0
        sizes.update(zip(letters, operand.shape))
    return math.prod(sizes.values())
