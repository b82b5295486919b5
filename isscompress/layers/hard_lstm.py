"""An LSTM whose gates are Keras 1/2's hard sigmoid, ``clip(0.2 x + 0.5, 0, 1)``: what every Keras LSTM computed
before Keras 2.3 made ``sigmoid`` the default (``recurrent_activation="hard_sigmoid"``), so what many shipped ``.h5``
models hold. PyTorch has no module for it; this one runs one or both directions.

    [i, f, g, o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh      (PyTorch's and Keras's gate order)
    c = hs(f) * c + hs(i) * tanh(g);  h = hs(o) * tanh(c)

A unit whose rows are all zero has gates hs(0) = 1/2 and g = tanh(0) = 0, so its cell state is halved at every step
and stays exactly 0 from a zero start, and its h is 0: ISS removal is exact, as for PyTorch's LSTM. (Keras 3's
``hard_sigmoid`` is ``relu6(x + 3) / 6``, another function: io.keras refuses it.)

The recurrence runs in a TorchScript function, so a traced model (export) keeps the loop over time.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .init import uniform


def _hard_sigmoid(x: Tensor) -> Tensor:
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def _hard_scan(projected: Tensor, h: Tensor, c: Tensor, weight_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``projected`` [T, B, 4H] (W_ih x + both biases), states [B, H]; steps in the order given."""
    outputs: list[Tensor] = []
    for step in range(projected.size(0)):
        i, f, g, o = (projected[step] + torch.mm(h, weight_hh.t())).chunk(4, 1)
        c = _hard_sigmoid(f) * c + _hard_sigmoid(i) * torch.tanh(g)
        h = _hard_sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export, which cannot keep the loop
    warnings.simplefilter("ignore", DeprecationWarning)
    _hard_scan = torch.jit.script(_hard_scan)


class HardSigmoidLSTM(nn.Module):
    """Sequence-first single-layer LSTM with hard-sigmoid gates: ``forward(x [T, B, I], (h, c) [D, B, H] | None) ->
    (output [T, B, D * H], (h, c))``, its parameters named as ``nn.LSTM`` names them (``weight_ih_l0``,
    ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, and ``_reverse`` for the backward direction)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, bidirectional: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias, self.bidirectional = input_size, hidden_size, bias, bidirectional
        bound = 1.0 / math.sqrt(hidden_size)
        for suffix in self._suffixes():
            shapes = {"weight_ih": (4 * hidden_size, input_size), "weight_hh": (4 * hidden_size, hidden_size)}
            if bias:
                shapes.update(bias_ih=(4 * hidden_size,), bias_hh=(4 * hidden_size,))
            for name, shape in shapes.items():
                setattr(self, f"{name}_l0{suffix}", nn.Parameter(uniform(shape, bound)))

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        outputs, hs, cs = [], [], []
        for direction, suffix in enumerate(self._suffixes()):
            projected = torch.matmul(x, getattr(self, f"weight_ih_l0{suffix}").t())
            if self.bias:
                projected = projected + getattr(self, f"bias_ih_l0{suffix}") + getattr(self, f"bias_hh_l0{suffix}")
            if state is None:
                h = c = x.new_zeros(x.size(1), self.hidden_size)
            else:
                h, c = state[0][direction], state[1][direction]
            if direction:  # the backward direction reads the sequence from its end
                projected = projected.flip(0)
            output, h, c = _hard_scan(projected, h, c, getattr(self, f"weight_hh_l0{suffix}"))
            outputs.append(output.flip(0) if direction else output)
            hs.append(h)
            cs.append(c)
        return torch.cat(outputs, -1), (torch.stack(hs), torch.stack(cs))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}, bidirectional={self.bidirectional}"
