"""Opt-in: a user model's multi-layer ``nn.LSTM``/``GRU``/``RNN`` becomes a :class:`LayerwiseRNN`, so a budget can
give each of its layers its own width (the recipe's ``iss.split_layers``; the file records which modules, so
``--arch`` and :func:`split_layers` rebuild the same module before loading the tensors)."""

from __future__ import annotations

import copy
import re
from typing import Iterable

from torch import nn

from ..layers.layerwise import SPLITTABLE, LayerwiseRNN


def multi_layer_modules(model: nn.Module) -> list[str]:
    """The names of ``model``'s PyTorch recurrent modules of more than one layer, in module order."""
    return [name for name, module in model.named_modules()
            if type(module) in SPLITTABLE and module.num_layers > 1]


def split_layers(model: nn.Module, names: Iterable[str] | None = None) -> nn.Module:
    """A copy of ``model`` with each named multi-layer recurrent module (default: every one) replaced by a
    :class:`LayerwiseRNN` computing the same; ``model`` is untouched. A user's code reopens a checkpoint that
    ``iss.split_layers`` made as ``resize_to(split_layers(model, names), tensors)``, ``names`` being the file's
    ``spec.split``."""
    found = multi_layer_modules(model)
    names = list(found if names is None else names)
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ValueError(f"not a multi-layer nn.LSTM/GRU/RNN of this model: {', '.join(unknown)} (it has "
                         f"{', '.join(found) or 'none'})")
    split = copy.deepcopy(model)
    for name in names:
        if not name:  # the model is itself the recurrent module
            return LayerwiseRNN.of(split)
        parent, _, child = name.rpartition(".")
        holder = split.get_submodule(parent) if parent else split
        setattr(holder, child, LayerwiseRNN.of(getattr(holder, child)))
    return split


def unsplit_name(name: str, split: Iterable[str]) -> str:
    """A group set's name in a split model as the unsplit model names it (``lstm.layers.1.l0.reverse`` ->
    ``lstm.l1.reverse``), so a report pairs each layer of the original with its own width after the split."""
    for module in split:
        prefix = f"{module}." if module else ""
        match = re.fullmatch(rf"{re.escape(prefix)}layers\.(\d+)\.l0(.*)", name)
        if match:
            return f"{prefix}l{match.group(1)}{match.group(2)}"
    return name
