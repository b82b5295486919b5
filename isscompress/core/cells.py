"""The cell table: everything isscompress knows about a recurrent cell kind, in one entry.

A cell kind declares its parameters (what their rows and columns count, which is all the ISS
groups need), its gate blocks, its state (names and widths, for export and for carried hidden
states), a module factory, and so its multiply-adds. Nothing outside this table branches on a
cell's name: adding a kind is one entry here plus, where PyTorch has no module for it, the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

ModuleFactory = Callable[[int, int, int, bool, bool], nn.Module]  # (input, hidden, proj, bias, bidirectional)


@dataclass(frozen=True)
class CellParam:
    """One parameter tensor of a cell (per layer and direction), described by what its axes count.

    rows: ``gates`` (one block of ``hidden`` rows per gate: unit k produces row k of every block)
    or ``proj`` (the projection's outputs). cols: ``input`` (what the layer reads), ``recurrent``
    (what the layer feeds back: its projected or plain output), ``hidden`` (the cell units), or
    None for a vector. ``only_with``: present only when the layer has biases / a projection.
    """

    name: str
    rows: Literal["gates", "proj"]
    cols: Literal["input", "recurrent", "hidden"] | None
    only_with: Literal["bias", "proj"] | None = None


RNN_PARAMS = (  # PyTorch's nn.RNN / nn.GRU / nn.LSTM naming: weight_ih_l{k}, weight_hh_l{k}, ...
    CellParam("weight_ih", "gates", "input"),
    CellParam("weight_hh", "gates", "recurrent"),
    CellParam("bias_ih", "gates", None, "bias"),
    CellParam("bias_hh", "gates", None, "bias"),
)
PROJECTION = CellParam("weight_hr", "proj", "hidden", "proj")


@dataclass(frozen=True)
class CellKind:
    """One recurrent cell kind as isscompress sees it."""

    name: str
    gates: int  # row blocks of the "gates" parameters, one per gate (i, f, g, o for LSTM)
    states: tuple[str, ...]  # carried state tensors, in the order the module takes and returns them
    make: ModuleFactory
    params: tuple[CellParam, ...] = RNN_PARAMS

    @property
    def projection(self) -> bool:
        """Whether the cell can project its output (proj_size)."""
        return any(p.only_with == "proj" for p in self.params)

    def layer_params(self, bias: bool, proj: int) -> tuple[CellParam, ...]:
        """The parameters one direction of a layer has."""
        present = {None, *(["bias"] if bias else []), *(["proj"] if proj else [])}
        return tuple(p for p in self.params if p.only_with in present)

    def shape(self, param: CellParam, input_size: int, hidden: int, proj: int = 0) -> tuple[int, ...]:
        rows = self.gates * hidden if param.rows == "gates" else proj
        cols = {"input": input_size, "recurrent": proj or hidden, "hidden": hidden, None: None}[param.cols]
        return (rows,) if cols is None else (rows, cols)

    def state_widths(self, hidden: int, proj: int = 0) -> tuple[int, ...]:
        """Width of each carried state: h is the (projected) output, c the cell."""
        return tuple((proj or hidden) if state == "h" else hidden for state in self.states)

    def macs(self, input_size: int, hidden: int, proj: int = 0) -> int:
        """Multiply-adds per token and direction: one per matrix weight (elementwise work ignored)."""
        shapes = (self.shape(p, input_size, hidden, proj) for p in self.layer_params(False, proj))
        return sum(rows * cols for rows, cols in shapes)


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
        CellKind("LSTM", 4, ("h", "c"), _lstm, (*RNN_PARAMS, PROJECTION)),
        CellKind("GRU", 3, ("h",), _gru),
        CellKind("RNN_TANH", 1, ("h",), _rnn("tanh")),
        CellKind("RNN_RELU", 1, ("h",), _rnn("relu")),
    )
}


PARAM_NAMES = tuple(dict.fromkeys(p.name for cell in CELLS.values() for p in cell.params))


def cell_for_gates(gates: int) -> CellKind | None:
    """The cell kind a gate count implies when nothing else says (the first entry with that count)."""
    return next((cell for cell in CELLS.values() if cell.gates == gates), None)
