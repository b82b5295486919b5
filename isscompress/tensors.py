"""Facts about tensors every package needs: which names hold one tensor, and cutting a state's graph.

Shared tensors are found one way everywhere, by the rule safetensors uses (``_find_shared_tensors``): two tensors
are shared when they live in the same storage and their bytes overlap. A tied decoder listed under two names, a
weight and a view of it, a state dict whose copies were cloned apart (not shared: each has its own storage) all
answer the same in the tracer, resize, masking, the checkpoint writer and the format families.
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor


def _byte_range(tensor: Tensor) -> tuple[int, int]:
    """The first and one-past-last byte a tensor can touch in its storage."""
    size = tensor.element_size()
    if tensor.numel() == 0:
        return 0, 0
    last = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
    start = tensor.storage_offset() * size
    return start, start + (last + 1) * size


def overlap(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors share bytes: the same storage and overlapping byte ranges."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _byte_range(a), _byte_range(b)
    return a0 < b1 and b0 < a1


def same_view(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors are one tensor under two names: overlapping, and seen alike (shape, strides, dtype,
    offset), so that what is done to one slice of one is done to the same slice of the other."""
    return (overlap(a, b) and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
            and a.storage_offset() == b.storage_offset())


def shared_aliases(named: Iterable[tuple[str, Tensor]]) -> dict[str, str]:
    """Every later name of a tensor that overlaps an earlier one -> the first name it overlaps."""
    by_storage: dict[tuple[str, int], list[tuple[str, Tensor]]] = {}  # only tensors of one storage can overlap
    aliases: dict[str, str] = {}
    for name, tensor in named:
        seen = by_storage.setdefault((str(tensor.device), tensor.untyped_storage().data_ptr()), [])
        first = next((earlier for earlier, other in seen if overlap(tensor, other)), None)
        if first is None:
            seen.append((name, tensor))
        else:
            aliases[name] = first
    return aliases


def detach_hidden(hidden: Any) -> Any:
    """Cut the graph between truncated-BPTT windows, keeping the values (a list of tensors or state tuples)."""
    return [tuple(t.detach() for t in h) if isinstance(h, tuple) else h.detach() for h in hidden]
