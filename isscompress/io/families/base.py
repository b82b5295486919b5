"""What a model family adapter provides: recognise its keys, rename them to the canonical layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor

from ...tensors import same_view
from ..files import RawCheckpoint


@dataclass(frozen=True)
class Canonical:
    """A checkpoint's tensors renamed to the canonical layout, plus what shapes cannot tell."""

    tensors: dict[str, Tensor]
    cell_hint: str | None = None
    tied: bool = False
    sources: dict[str, str] = field(default_factory=dict)  # canonical key -> key in the file
    architecture: str | None = None  # the architecture kind (None: the recurrent stack)


@dataclass(frozen=True)
class Family:
    """One checkpoint layout. ``matches`` looks only at key names; ``convert`` renames tensors."""

    name: str
    expects: str  # one line for error messages: the keys this family looks for
    matches: Callable[[Mapping[str, Tensor]], bool]
    convert: Callable[[RawCheckpoint], Canonical]
    # The name a canonical key has in this family's files (for errors about keys that are missing).
    source_key: Callable[[int, str, str], str] = lambda layer, param, suffix: f"layers.{layer}.{param}_l0{suffix}"


def same_tensor(a: Tensor, b: Tensor) -> bool:
    """True when two tensors are one parameter: one tensor under two names, or equal bit for bit."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if same_view(a, b):
        return True
    head = min(a.numel(), 4096)  # untied matrices almost always differ at once: no full pass for them
    return torch.equal(a.reshape(-1)[:head], b.reshape(-1)[:head]) and torch.equal(a, b)
