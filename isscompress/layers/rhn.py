"""A Recurrent Highway Network layer (Zilly et al., ICML 2017), as the ISS paper's RHN experiments use it.

Per time step, ``depth`` micro-layers update the state s (s before the first is the previous step's last):

    [h; t] = R^d s + b^d  (+ W x_t in the first micro-layer only)
    s      = tanh(h) * sigmoid(t) + s * (1 - sigmoid(t))          # coupled carry gate C = 1 - T

Row blocks of W, R^d and b^d: H (block 0), then T (block 1). A unit whose rows are all zero has
tanh(0) = 0 and sigmoid(0) = 1/2, so its state is halved at every micro-layer and stays exactly 0
from a zero start; with its columns zero nothing reads it. That is why ISS removal is exact.

The recurrence runs in a TorchScript function, so a traced model (export) keeps the loop over time
instead of unrolling it to the traced length.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .init import uniform


def _highway_scan(projected: Tensor, state: Tensor, recurrent: Tensor, bias: Tensor,
                  mask: Tensor) -> tuple[Tensor, Tensor]:
    """``projected`` [T, B, 2H] (W x_t), ``state`` [B, H], ``recurrent`` [D, 2H, H], ``bias`` [D, 2H],
    ``mask`` [B, H] (variational dropout on the state that R^d reads; ones when off)."""
    hidden = state.size(1)
    outputs: list[Tensor] = []
    for step in range(projected.size(0)):
        for d in range(recurrent.size(0)):
            pre = torch.addmm(bias[d], state * mask, recurrent[d].t())
            if d == 0:
                pre = pre + projected[step]
            transform = torch.tanh(pre[:, :hidden])
            gate = torch.sigmoid(pre[:, hidden:])
            state = transform * gate + state * (1.0 - gate)
        outputs.append(state)
    return torch.stack(outputs), state


with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export, which cannot keep the loop
    warnings.simplefilter("ignore", DeprecationWarning)
    _highway_scan = torch.jit.script(_highway_scan)


class RHNLayer(nn.Module):
    """Sequence-first RHN layer: ``forward(x [T, B, I], state [1, B, H] | None) -> (output [T, B, H], state [1, B, H])``.

    ``state_dropout`` is Zilly et al.'s variational dropout on the recurrent state: one mask per
    call (a truncated-BPTT window), the same at every time step and micro-layer; training only.
    """

    def __init__(self, input_size: int, hidden_size: int, depth: int, bias: bool = True,
                 transform_bias: float = -2.0, state_dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"an RHN needs a recurrence depth of at least 1, not {depth}")
        self.input_size, self.hidden_size, self.depth, self.bias = input_size, hidden_size, depth, bias
        self.state_dropout = state_dropout
        bound = 1.0 / math.sqrt(hidden_size)
        self.weight_ih_l0 = nn.Parameter(uniform((2 * hidden_size, input_size), bound))
        for d in range(depth):
            setattr(self, f"weight_hh{d}_l0", nn.Parameter(uniform((2 * hidden_size, hidden_size), bound)))
            if bias:  # the transform gate starts closed (carry open), as in Zilly et al.
                initial = torch.zeros(2 * hidden_size)
                initial[hidden_size:] = transform_bias
                setattr(self, f"bias_hh{d}_l0", nn.Parameter(initial))

    def _stacked(self, prefix: str) -> Tensor:
        return torch.stack([getattr(self, f"{prefix}{d}_l0") for d in range(self.depth)])

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch = x.size(1)
        start = state[0] if state is not None else x.new_zeros(batch, self.hidden_size)
        recurrent = self._stacked("weight_hh")
        bias = self._stacked("bias_hh") if self.bias else recurrent.new_zeros(self.depth, 2 * self.hidden_size)
        mask = torch.ones_like(start)
        if self.training and self.state_dropout > 0:
            keep = 1.0 - self.state_dropout
            mask = torch.bernoulli(torch.full_like(start, keep)) / keep
        projected = torch.matmul(x, self.weight_ih_l0.t())
        output, last = _highway_scan(projected, start, recurrent, bias, mask)
        return output, last.unsqueeze(0)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, depth={self.depth}, bias={self.bias}"
