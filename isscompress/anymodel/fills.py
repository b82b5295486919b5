"""Constants written into hidden features where a mask says (``masked_fill(pad, -inf)`` before a max-pool,
``x[x == 0] = -1e9``) and tensors written into a buffer (``outs[t] = h``): the tracer's rules for writes.

A fill keeps every element in its column but may put a non-zero constant where a removed unit's zeros were; such a
value is marked, may be moved, pooled or read by its own weights, and is refused where its columns would meet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .labels import MATMULS, PRODUCTS, REDUCTIONS, SUMS, UNLABELED, fill, uniform_along


class WriteRules:
    """Mixed into the tracer: it provides labels (``label_of``/``set_label``), ``filled``, ``refuse``, ``unit_name``."""

    def is_filled(self, value: Any) -> bool:
        """Whether ``value``'s removed-unit positions may hold a constant a fill wrote (not zero): harmless while
        each column is only moved, pooled or read by its own weights, refused where columns meet."""
        value = value.data if isinstance(value, PackedSequence) else value
        return isinstance(value, Tensor) and id(value) in self.filled and self.label_of(value) is not None

    def fill(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        """A constant written where a mask says (``masked_fill(mask, -inf)`` before a max-pool, ``x[x == 0] = -1e9``):
        every element stays in its column; a non-zero constant may land on a removed unit, which marks the value."""
        target = args[0]
        labels = self.label_of(target)
        value = kwargs.get("value", args[2] if len(args) > 2 else 0)
        if name == "__setitem__" and isinstance(value, Tensor) and (value.numel() != 1 or self.label_of(value) is not None):
            return self.assign(target, args[1], value)  # out[t] = h: the labels move as the values do
        if labels is None:
            return
        if isinstance(value, Tensor):
            if self.label_of(value) is not None or value.numel() != 1:
                self.refuse(f"`{name}` writes tensors into hidden features of {self.unit_name(int(labels.max()))}")
            value = float(value)
        result = target if name.endswith("_") or name == "__setitem__" else out
        self.set_label(result, labels)
        if value != 0 or self.is_filled(target):
            self.filled.add(id(result))

    def assign(self, target: Tensor, index: Any, value: Tensor) -> None:
        """``target[index] = value`` with a tensor (a buffer filled step by step): the target's labels take the
        value's labels at the same positions (a value that is not a unit's output makes them unlabelled)."""
        if not target.is_floating_point() or self.is_filled(value):
            self.refuse("a fill-marked or non-float tensor is written into hidden features")
        labels = self.label_of(target)
        labels = labels.clone() if labels is not None else fill(target, UNLABELED)
        source = self.label_of(value)
        labels[index] = source if source is not None else torch.full(value.shape, UNLABELED, dtype=torch.long)
        self.set_label(target, labels)

    def check_filled(self, name: str, args: tuple, labeled: list) -> None:
        """Columns holding a fill constant may be moved, pooled, or read by their own weights; not combined."""
        parameter = any(isinstance(a, nn.Parameter) for a in args)
        if (name in SUMS or name in PRODUCTS or name in MATMULS) and not parameter:
            self.refuse(f"`{name}` combines hidden features in which a fill wrote a constant at removed units "
                        "(`masked_fill`/`x[mask] = c` with c not zero): a removed unit would not contribute zero")
        if name in REDUCTIONS:
            dim = args[1] if len(args) > 1 and not isinstance(args[1], Tensor) else None
            x = self.label_of(args[0])
            dims = [d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])] if dim is not None else []
            if dim is None or any(uniform_along(x, d) is None for d in dims):
                self.refuse(f"`{name}` reduces across hidden features in which a fill wrote a constant at removed "
                            "units")
