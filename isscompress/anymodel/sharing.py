"""Tensors a module holds under several names (a decoder tied to its embedding), found by the one rule of
:mod:`isscompress.tensors` (same storage, overlapping bytes): the tracer leaves such an embedding to the last layer's
units, resize ties the rebuilt modules again, and a shrunk file stores each shared tensor under its first name only."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from ..tensors import shared_aliases


def shared_names(module: nn.Module) -> dict[str, str]:
    """Every other name of a tensor the module holds under several names -> its first name (a tied decoder)."""
    return shared_aliases([*module.named_parameters(remove_duplicate=False),
                           *module.named_buffers(remove_duplicate=False)])


def parameter_names(module: nn.Module) -> dict[int, list[str]]:
    """id of each parameter -> every name it is held under, the first name first (one list for all the names of a
    shared tensor, even when two parameter objects view the same bytes)."""
    named = list(module.named_parameters(remove_duplicate=False))
    aliases = shared_aliases(named)
    names: dict[str, list[str]] = {}
    for name, _ in named:
        names.setdefault(aliases.get(name, name), []).append(name)
    return {id(p): names[aliases.get(name, name)] for name, p in named}


def with_shared(state: Mapping[str, Tensor], aliases: Mapping[str, str]) -> dict[str, Tensor]:
    """``state`` with every other name of a shared tensor holding its first name's tensor (a file written with one
    name per tensor, or a surgery that cut only the first name)."""
    return {**state, **{alias: state[name] for alias, name in aliases.items() if name in state}}
