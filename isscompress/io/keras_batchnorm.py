"""A Keras ``BatchNormalization`` between layers, read as what it is in inference: one scale and shift per feature,
``y = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta``.

It maps each feature to itself, so it is folded exactly into whatever reads it next — its scale into the reader's
input columns, its shift into the reader's bias (``W (s x + t) + b = (W diag s) x + (W t + b)``), or into the rows of
an embedding table it follows. The model stays the regular stack, and a unit the next layer no longer reads costs its
column there, as without the norm. Only the moving statistics are used: a Keras model always normalises with them
in inference; in training it would use the batch's, which no exported model does.
"""

from __future__ import annotations

from pathlib import Path
import torch
from torch import Tensor

from ..errors import CheckpointError
from .keras_files import KerasLayer

PerFeature = tuple[Tensor, Tensor]  # (scale, shift), one element per feature
_INERT = {"momentum", "fused", "renorm_momentum", "synchronized", "name", "trainable", "dtype", "batch_input_shape",
          "batch_shape", "input_shape", "autocast"} | {f"{w}_{kind}" for w in ("beta", "gamma", "moving_mean",
                                                                             "moving_variance")
                                                     for kind in ("initializer", "regularizer", "constraint")}
_ABSENT = {"renorm": False, "renorm_clipping": None, "virtual_batch_size": None, "adjustment": None}


def refuse(path: Path, layer: str, kind: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: Keras layer '{layer}' ({kind}) {what}; isscompress does not fold it into the "
                           "next layer, so that it never compresses a different function than the one you trained.",
                           "Save the model with a plain BatchNormalization (its moving statistics, over the last "
                           "axis) between the recurrent layers, or fold the norm into the next layer yourself.")


def batchnorm_map(path: Path, layer: KerasLayer, width: int) -> PerFeature:
    """The layer's per-feature (scale, shift) over the ``width`` features it reads, every setting checked."""
    config = layer.config
    for key, value in config.items():
        if key in _ABSENT and value != _ABSENT[key]:
            raise refuse(path, layer.name, layer.kind, f"has {key} = {str(value)[:40]!r}, which normalises "
                         "otherwise than by its moving statistics")
        if key not in _INERT | set(_ABSENT) | {"axis", "epsilon", "center", "scale"}:
            raise refuse(path, layer.name, layer.kind, f"has the setting {key} = {str(value)[:40]!r}, which "
                         "isscompress does not know (it may change what the layer computes)")
    if config.get("axis", -1) not in (-1, 2, [-1], [2]):
        raise refuse(path, layer.name, layer.kind, f"normalises axis {str(config.get('axis'))[:20]}, not the "
                     "features (the last axis)")
    epsilon = config.get("epsilon", 1e-3)
    if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not epsilon >= 0:
        raise refuse(path, layer.name, layer.kind, f"has epsilon = {str(epsilon)[:20]!r}, not a number >= 0")
    scale, center = bool(config.get("scale", True)), bool(config.get("center", True))
    shapes = [tuple(w.shape) for w in layer.weights]
    expected = [(width,)] * (int(scale) + int(center) + 2)
    if shapes != expected:
        raise refuse(path, layer.name, layer.kind, f"has weights of shapes {shapes}, but a BatchNormalization of "
                     f"{width} features (scale={scale}, center={center}) has {expected}")
    arrays = [torch.from_numpy(w.astype("float64")) for w in layer.weights]
    gamma = arrays.pop(0) if scale else torch.ones(width, dtype=torch.float64)
    beta = arrays.pop(0) if center else torch.zeros(width, dtype=torch.float64)
    mean, variance = arrays
    if bool((variance + epsilon <= 0).any()):
        raise refuse(path, layer.name, layer.kind, "has a moving variance that, with epsilon, is not positive")
    factor = gamma / torch.sqrt(variance + epsilon)
    return factor, beta - mean * factor


def compose(first: PerFeature | None, then: PerFeature) -> PerFeature:
    """``then`` applied after ``first``."""
    if first is None:
        return then
    return first[0] * then[0], first[1] * then[0] + then[1]


def fold_into_reader(weight: Tensor, bias: Tensor | None, mapping: PerFeature) -> tuple[Tensor, Tensor | None]:
    """A reader ``W x + b`` (``weight`` [outputs, features]) of the mapped features, as one of the raw features.
    A reader without a bias can take only a map that shifts nothing (ValueError otherwise)."""
    scale, shift = mapping
    folded = (weight.double() * scale).to(weight.dtype)
    if bias is None:
        if bool(shift.ne(0).any()):
            raise ValueError("the reader has no bias to take the shift")
        return folded, None
    return folded, (bias.double() + weight.double() @ shift).to(bias.dtype)

