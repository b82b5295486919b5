"""The cell table: everything isscompress knows about a recurrent cell kind, in one entry.

A cell kind contributes gate blocks (how many row blocks ``weight_ih``/``weight_hh`` stack), its
state (names and widths, for export and for carried hidden states), a module factory, and its
multiply-adds. Nothing outside this table branches on a cell's name: adding a kind is one entry
here plus, where PyTorch has no module for it, the module itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

ModuleFactory = Callable[[int, int, int, bool, bool], nn.Module]  # (input, hidden, proj, bias, bidirectional)


@dataclass(frozen=True)
class CellKind:
    """One recurrent cell kind as isscompress sees it."""

    name: str
    gates: int  # row blocks of weight_ih / weight_hh, one per gate (i, f, g, o for LSTM)
    states: tuple[str, ...]  # carried state tensors, in the order the module takes and returns them
    make: ModuleFactory
    projection: bool = False  # has proj_size (weight_hr)

    def state_widths(self, hidden: int, proj: int = 0) -> tuple[int, ...]:
        """Width of each carried state: h is the (projected) output, c the cell."""
        return tuple((proj or hidden) if state == "h" else hidden for state in self.states)

    def macs(self, input_size: int, hidden: int, proj: int = 0) -> int:
        """Multiply-adds per token and direction: gate matmuls and the projection (elementwise work ignored)."""
        return self.gates * hidden * (input_size + (proj or hidden)) + proj * hidden


def _lstm(input_size: int, hidden: int, proj: int, bias: bool, bidirectional: bool) -> nn.Module:
    return nn.LSTM(input_size, hidden, proj_size=proj, bias=bias, bidirectional=bidirectional)


def _gru(input_size: int, hidden: int, proj: int, bias: bool, bidirectional: bool) -> nn.Module:
    return nn.GRU(input_size, hidden, bias=bias, bidirectional=bidirectional)


def _rnn(nonlinearity: str) -> ModuleFactory:
    def make(input_size: int, hidden: int, proj: int, bias: bool, bidirectional: bool) -> nn.Module:
        return nn.RNN(input_size, hidden, nonlinearity=nonlinearity, bias=bias, bidirectional=bidirectional)

    return make


CELLS: dict[str, CellKind] = {
    cell.name: cell
    for cell in (
        CellKind("LSTM", 4, ("h", "c"), _lstm, projection=True),
        CellKind("GRU", 3, ("h",), _gru),
        CellKind("RNN_TANH", 1, ("h",), _rnn("tanh")),
        CellKind("RNN_RELU", 1, ("h",), _rnn("relu")),
    )
}


def cell_for_gates(gates: int) -> CellKind | None:
    """The cell kind a gate count implies when nothing else says (the first entry with that count)."""
    return next((cell for cell in CELLS.values() if cell.gates == gates), None)
