"""The tracer's rules where hidden features are summed: reductions (over time, or across units, which couples
them), matrix products (attention scores couple the units they contract; free axes carry their units) and pooling
over time."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .labels import UNLABELED, ZERO, uniform_along


class SumRules:
    """Mixed into the tracer: it provides labels (``label_of``/``set_label``), ``couple``, ``refuse``, ``unit_name``,
    ``read_by_weight`` and ``elementwise``."""

    def reduce_rows(self, rows: Tensor, what: str) -> Tensor:
        """One label per row of ``rows`` (…, r): the units met along a reduced axis are coupled.

        A row of units (and exact zeros) becomes its unit; a row that mixes units with other values is
        refused (a removed unit would leave a non-zero result); a row of other values stays unlabeled."""
        flat = rows.reshape(-1, rows.shape[-1])
        is_unit = flat >= 0
        big = torch.iinfo(torch.long).max
        low = torch.where(is_unit, flat, big).min(1).values
        high = torch.where(is_unit, flat, -1).max(1).values
        has_unit = high >= 0
        mixed = has_unit & (flat == UNLABELED).any(1)
        if bool(mixed.any()):
            self.refuse(f"{what} mixes hidden features of {self.unit_name(int(low[mixed][0]))} with other values")
        for row in (has_unit & (low != high)).nonzero().squeeze(1).tolist():
            for other in flat[row][is_unit[row]].unique().tolist():
                self.couple(int(low[row]), other, what)
        all_zero = (flat == ZERO).all(1)
        result = torch.where(has_unit, low, torch.where(all_zero, ZERO, UNLABELED))
        return result.reshape(rows.shape[:-1])

    def units_per_element(self, shape: tuple[int, ...], labels: Tensor, what: str) -> Tensor:
        """The unit each element of a tensor of ``shape`` meets when it is broadcast against features labelled
        ``labels`` (a bias added to them, a per-feature scale), one label per element in order (see reduce_rows)."""
        index = torch.arange(math.prod(shape)).reshape(shape)
        index, labels = torch.broadcast_tensors(index, labels)
        order = index.flatten().argsort(stable=True)
        return self.reduce_rows(labels.flatten()[order].reshape(math.prod(shape), -1), what)

    def reduction(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if isinstance(dim, Tensor):  # torch.max(a, b): elementwise
            return self.elementwise("maximum" if name == "max" else "minimum", args, out)
        labels = self.label_of(x)
        if dim is None:
            self.refuse(f"`{name}` reduces over all elements of hidden features")
        dims = [d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        rest = [d for d in range(x.dim()) if d not in dims]
        moved = labels.permute(*rest, *dims)
        rows = moved.reshape(*moved.shape[: len(rest)], -1)
        reduced = self.reduce_rows(rows, f"`{name}` over dims {dims}")
        if keepdim:
            for d in dims:
                reduced = reduced.unsqueeze(d)
        values = out[0] if isinstance(out, tuple) else out
        self.set_label(values, reduced)

    def matmul(self, name: str, args: tuple, out: Any) -> None:
        """``a @ b``: units on the free axes carry over (``softmax(S) @ u``); units on the contracted axis
        must meet the same units on the other side (``h @ u.T`` couples them) or a weight (``h @ W``)."""
        a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
        if isinstance(b, nn.Parameter) and self.label_of(b) is None:  # h @ W, or h @ w (attention scores)
            return self.read_by_weight(a, b, 0, -1, name)
        if a.dim() < 2 or b.dim() < 2:
            self.refuse(f"`{name}` with a vector operand that is not a parameter reads hidden features")
        la, lb = self.operand_labels(a), self.operand_labels(b)
        row_a, contracted_a = self.matmul_side(la, name, free_axis=-2)
        col_b, contracted_b = self.matmul_side(lb, name, free_axis=-1)
        if contracted_a is not None or contracted_b is not None:
            if contracted_a is None or contracted_b is None:
                self.refuse(f"`{name}` contracts hidden features with values that are neither hidden features of "
                            "the same units nor a weight")
            for x, y in zip(contracted_a.tolist(), contracted_b.tolist()):
                if x >= 0 and y >= 0:
                    self.couple(x, y)
                elif (x >= 0 and y == UNLABELED) or (y >= 0 and x == UNLABELED):
                    self.refuse(f"`{name}` contracts hidden features with values that are not hidden features")
            return  # every feature is summed into the result: it is not a hidden feature any more
        row, col = row_a.unsqueeze(-1), col_b.unsqueeze(-2)
        if bool(((row >= 0) & (col >= 0)).any()):
            self.refuse(f"`{name}` multiplies hidden features by hidden features on free axes")
        labels = torch.where(row >= 0, row, torch.where(col >= 0, col, UNLABELED))
        self.set_label(out, labels.expand(out.shape).contiguous())

    def pool(self, name: str, args: tuple, out: Any) -> None:
        """Pooling over time of ``(batch, features, time)``: zero stays zero, so the features keep their units as
        long as each feature is one unit along the pooled axis."""
        labels = self.label_of(args[0])
        per_channel = uniform_along(labels, -1)
        if per_channel is None:
            self.refuse(f"`{name}` pools over an axis along which the hidden features change units")
        value = out[0] if isinstance(out, tuple) else out
        self.set_label(value, per_channel.unsqueeze(-1).expand(value.shape).contiguous())

    def matmul_side(self, labels: Tensor, name: str, free_axis: int) -> tuple[Tensor, Tensor | None]:
        """One operand of a matmul: (labels of its free axis), and the labels of its contracted axis when
        its units lie along that one (None when they do not)."""
        contract_axis = -1 if free_axis == -2 else -2
        along = uniform_along(labels, contract_axis)
        if along is not None:
            return along, None
        per_position = labels.movedim(contract_axis, 0).reshape(labels.shape[contract_axis], -1)
        return torch.full(labels.narrow(contract_axis, 0, 1).squeeze(contract_axis).shape, UNLABELED), \
            self.reduce_rows(per_position, name)
