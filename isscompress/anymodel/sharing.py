"""Tensors a module holds under several names (a decoder tied to its embedding), found once, as safetensors'
``_find_shared_tensors`` finds them: the tracer leaves such an embedding to the last layer's units, resize ties the
rebuilt modules again, and a shrunk file stores each shared tensor under its first name only."""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn


def shared_names(module: nn.Module) -> dict[str, str]:
    """Every other name of a tensor the module holds under several names -> its first name (a tied decoder): the one
    place shared tensors are found, as safetensors' ``_find_shared_tensors`` finds them."""
    first: dict[int, str] = {}
    aliases = {}
    for name, tensor in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        if id(tensor) in first:
            aliases[name] = first[id(tensor)]
        else:
            first[id(tensor)] = name
    return aliases


def with_shared(state: Mapping[str, Tensor], aliases: Mapping[str, str]) -> dict[str, Tensor]:
    """``state`` with every other name of a shared tensor holding its first name's tensor (a file written with one
    name per tensor, or a surgery that cut only the first name)."""
    return {**state, **{alias: state[name] for alias, name in aliases.items() if name in state}}
