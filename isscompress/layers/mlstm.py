"""A multiplicative LSTM layer (Krause et al. 2016, "Multiplicative LSTM for sequence modelling"), as UniRep uses it.

Per time step, an intermediate m of one value per unit gates the recurrent input multiplicatively:

    m = (W_mx x_t) * (W_mh h_{t-1})
    [i, f, o, u] = W_x x_t + W_m m + b          (row blocks in this order, as UniRep orders them)
    c = sigmoid(f) * c + sigmoid(i) * tanh(u);  h = sigmoid(o) * tanh(c)

Unit k owns row k of each gate block of W_x, W_m and b, row k of W_mx and W_mh (its m: the cell table's ``units``
rows), column k of W_m (what reads its m: ``units`` columns) and column k of W_mh (what reads its h). A unit whose rows are all zero has m_k = 0, gates 1/2 and
u = tanh(0) = 0, so its cell state is halved at every step and stays exactly 0 from a zero start; with its columns
zero nothing reads it. That is why ISS removal is exact.

The recurrence runs in a TorchScript function, so a traced model (export) keeps the loop over time.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .init import uniform


def _multiplicative_scan(projected: Tensor, intermediate_x: Tensor, h: Tensor, c: Tensor, weight_mh: Tensor,
                         weight_gm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``projected`` [T, B, 4H] (W_x x + b), ``intermediate_x`` [T, B, H] (W_mx x), states [B, H]."""
    outputs: list[Tensor] = []
    for step in range(projected.size(0)):
        m = intermediate_x[step] * torch.mm(h, weight_mh.t())
        gates = projected[step] + torch.mm(m, weight_gm.t())
        i, f, o, u = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs), h, c


with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export, which cannot keep the loop
    warnings.simplefilter("ignore", DeprecationWarning)
    _multiplicative_scan = torch.jit.script(_multiplicative_scan)


class MLSTMLayer(nn.Module):
    """Sequence-first mLSTM layer: ``forward(x [T, B, I], (h [1, B, H], c [1, B, H]) | None) -> (output [T, B, H],
    (h, c))``, its parameters named as PyTorch's single-layer modules name theirs: ``weight_ih_l0`` (the gates from
    x, W_x), ``weight_gm_l0`` (the gates from m, W_m), ``weight_mx_l0`` (m from x), ``weight_mh_l0`` (m from h) and
    ``bias_ih_l0`` (b)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight_ih_l0 = nn.Parameter(uniform((4 * hidden_size, input_size), bound))
        self.weight_gm_l0 = nn.Parameter(uniform((4 * hidden_size, hidden_size), bound))
        self.weight_mx_l0 = nn.Parameter(uniform((hidden_size, input_size), bound))
        self.weight_mh_l0 = nn.Parameter(uniform((hidden_size, hidden_size), bound))
        if bias:
            self.bias_ih_l0 = nn.Parameter(uniform((4 * hidden_size,), bound))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        batch = x.size(1)
        if state is None:
            h = c = x.new_zeros(batch, self.hidden_size)
        else:
            h, c = state[0][0], state[1][0]
        projected = torch.matmul(x, self.weight_ih_l0.t())
        if self.bias:
            projected = projected + self.bias_ih_l0
        intermediate = torch.matmul(x, self.weight_mx_l0.t())
        output, h, c = _multiplicative_scan(projected, intermediate, h, c, self.weight_mh_l0, self.weight_gm_l0)
        return output, (h.unsqueeze(0), c.unsqueeze(0))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"
