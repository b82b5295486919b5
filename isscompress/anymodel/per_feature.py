"""The tracer's rules for operations that map each hidden feature to itself through its own parameters: a BatchNorm's
scale and shift (its running statistics carried with the unit) and a depthwise convolution's kernel."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .labels import UNLABELED


class PerFeatureRules:
    """Mixed into the tracer: it provides labels (``label_of``/``set_label``), ``refuse``, ``units_per_element``,
    ``add_reader``, the parameter and buffer names, and the flow."""

    def per_feature_norm(self, args: tuple, kwargs: dict, out: Any) -> None:
        """``batch_norm``: per feature (axis 1) a scale and shift, ``(x - mean) / sqrt(var + eps) * weight + bias``.
        Its running statistics are carried (cut with the unit, in no norm)."""
        def arg(index: int, key: str) -> Any:
            return kwargs.get(key, args[index] if len(args) > index else None)

        weight, bias = arg(3, "weight"), arg(4, "bias")
        if weight is None or bias is None:
            self.refuse("`batch_norm` without affine parameters (affine=False) shifts a removed unit's zero feature "
                        "to a non-zero value")
        statistics = tuple(self.buffer_names[id(t)] for t in (arg(1, "running_mean"), arg(2, "running_var"))
                           if isinstance(t, Tensor) and id(t) in self.buffer_names)
        self.per_feature(args[0], (weight, bias), statistics, out, "`batch_norm`")

    def per_feature(self, x: Tensor, parameters: tuple, carried: tuple[str, ...], out: Any, op: str) -> None:
        """An operation that maps each feature (axis 1) to itself through its own elements of ``parameters`` (a
        BatchNorm's scale and shift, a depthwise convolution's kernel): those elements join the unit's group, so with
        them zero a removed unit's output is exactly zero; ``carried`` tensors (running statistics) are cut with it."""
        labels = self.label_of(x)
        if labels.dim() < 2:
            self.refuse(f"{op} reads hidden features without a feature axis")
        given = [p for p in parameters if p is not None]
        names = [self.param_names.get(id(p), [None])[0] for p in given]
        if None in names:
            self.refuse(f"{op} combines hidden features with tensors that are not parameters of the model")
        reader = self.stack[-1] if self.stack and self.stack[-1] else names[0]
        per_channel_shape = (1, labels.shape[1], *[1] * (labels.dim() - 2))  # one element per feature of axis 1
        units = self.units_per_element(per_channel_shape, labels, f"{op} with `{names[0]}`")  # unit, zeros, or other
        for channel, unit in enumerate(units.tolist()):
            if unit >= 0:
                for key in (*names, *carried):
                    self.add_reader(unit, (key, 0, channel), reader)
        self.flow.carried_keys.update(carried)
        if isinstance(out, Tensor):
            # Every position of an output channel is its unit's: a zero in (padding) comes out as the channel's shift,
            # which is zero exactly when the unit is removed. A channel of no unit is other values (a shift of zeros).
            shape = [1] * out.dim()
            shape[1] = -1
            own = torch.where(units >= 0, units, torch.full_like(units, UNLABELED))
            self.set_label(out, own.view(shape).expand(out.shape).contiguous())
