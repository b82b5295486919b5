"""Shared renaming helper: map a family's recurrent keys onto the canonical layout."""

from __future__ import annotations

import re
from typing import Callable, Mapping

from torch import Tensor

from ...architectures.stack import layer_key
from ...errors import CheckpointError

DIRECTION = {None: 0, "": 0, "_reverse": 1}


def rename_layers(
    tensors: Mapping[str, Tensor],
    pattern: re.Pattern[str],
    parse: Callable[[re.Match[str]], tuple[int, str, str | None]],
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rename keys that match ``pattern`` to ``layers.{l}.{param}_l0[_reverse]``; keep the rest as is.

    ``parse`` turns a match into (layer, param, direction suffix). Keys that match nothing are
    kept, so the shape check names them as not part of the architecture. Also returns the
    original name of every renamed key, so errors can speak the user's key names.
    """
    renamed: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    for key, value in tensors.items():
        match = pattern.match(key)
        target = key
        if match:
            layer, param, suffix = parse(match)
            target = layer_key(layer, param, DIRECTION[suffix])
        if target in renamed:
            raise CheckpointError(f"Tensors '{sources[target]}' and '{key}' both describe '{target}'.",
                                  "Keep only one of them in the checkpoint.")
        renamed[target] = value
        sources[target] = key
    return renamed, sources
