"""One tensor argument per hidden state: the calling convention of every exported or compiled runtime.

``tokens`` (or ``features``), then per layer ``h0_layer{l}`` (and ``c0_layer{l}`` for LSTM); outputs
``logits`` (or ``output``), then ``hn_layer{l}`` (and ``cn_layer{l}``). Flat, named arguments let every layer keep
its own width, which nested state tuples in TorchScript/ONNX signatures would not.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..architectures.stack import ModelSpec


class StateModel(Protocol):
    """What the flat calling convention needs of a model: ``forward(inputs, hidden) -> (outputs, hidden)`` and the
    spec that gives each layer's state widths (what a stack architecture's ``build`` returns)."""

    spec: ModelSpec

    def __call__(self, inputs: Tensor, hidden: Any = None) -> tuple[Tensor, Any]: ...


class FlatStateModel(nn.Module):
    """A state model with one tensor argument per hidden state, for tracing and ONNX."""

    def __init__(self, model: StateModel) -> None:
        super().__init__()
        self.model = model
        self.per_layer = len(model.spec.cell_kind.states)  # (h, c) for LSTM, h otherwise

    def forward(self, inputs: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        n = self.per_layer
        hidden = [tuple(states[i : i + n]) if n > 1 else states[i] for i in range(0, len(states), n)]
        output, new_hidden = self.model(inputs, hidden)
        flat: list[Tensor] = [output]
        for state in new_hidden:
            flat.extend(state if n > 1 else (state,))
        return tuple(flat)


def io_names(model: StateModel) -> tuple[list[str], list[str]]:
    lm = model.spec.is_language_model
    inputs, outputs = ["tokens" if lm else "features"], ["logits" if lm else "output"]
    for index in range(len(model.spec.layers)):
        for state in model.spec.cell_kind.states:
            inputs.append(f"{state}0_layer{index}")
            outputs.append(f"{state}n_layer{index}")
    return inputs, outputs


def example_arguments(model: StateModel, steps: int, batch: int, seed: int) -> tuple[Tensor, ...]:
    spec = model.spec
    generator = torch.Generator().manual_seed(seed)
    args = [spec.probe_inputs(steps=steps, batch=batch, seed=seed)]
    for layer in spec.layers:
        for width in spec.cell_kind.state_widths(layer):
            args.append(torch.randn(spec.directions, batch, width, generator=generator))
    return tuple(args)
