"""The cell table: everything isscompress knows about a recurrent cell kind, in one entry.

A cell kind declares its parameters (what their rows and columns count, which is all the ISS
groups need), its gate blocks, its state (names and widths, for export and for carried hidden
states), a module factory, and so its multiply-adds. Nothing outside this table branches on a
cell's name: adding a kind is one entry here plus, where PyTorch has no module for it, the module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Protocol

from torch import nn

from .hard_lstm import HardSigmoidLSTM
from .mlstm import MLSTMLayer
from .rhn import RHNLayer


class LayerShape(Protocol):
    """What a cell needs to know of one layer (isscompress.LayerSpec is one)."""

    input_size: int
    hidden_size: int
    proj_size: int
    depth: int


ModuleFactory = Callable[[LayerShape, bool, bool], nn.Module]  # (layer, bias, bidirectional) -> module


@dataclass(frozen=True)
class CellParam:
    """One parameter tensor of a cell (per layer and direction), described by what its axes count.

    rows: ``gates`` (one block of ``hidden`` rows per gate: unit k produces row k of every block),
    ``units`` (one block of ``hidden`` rows: a value of the unit's own inside the step, such as a multiplicative
    LSTM's intermediate m) or ``proj`` (the projection's outputs). cols: ``input`` (what the layer reads),
    ``recurrent`` (what the layer feeds back: its projected or plain output), ``hidden`` (the cell units, as a
    projection reads them), ``units`` (what reads the ``units`` rows' values), or None for a vector. ``only_with``:
    present only when the layer has biases / a projection. ``per_depth``: one tensor per micro-layer of a deep
    transition (``name0``, ``name1``, ...).
    """

    name: str
    rows: Literal["gates", "units", "proj"]
    cols: Literal["input", "recurrent", "hidden", "units"] | None
    only_with: Literal["bias", "proj"] | None = None
    per_depth: bool = False


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
    bidirectional: bool = True  # whether its module can run both directions
    equations: str = ""  # what it computes, in a line: what inspect says it assumes of a checkpoint
    # settings a file may declare whose values must be these for this cell (beside io.equations' common table):
    # the activation of a relu RNN, the reset-gate placement of a GRU
    settings: tuple[tuple[str, str], ...] = ()
    int8: bool = False  # torch's dynamic int8 quantisation has a module for it (nn.LSTM, nn.GRU)
    onnx: bool = False  # ONNX has an operator for it (LSTM, GRU, RNN), so ONNX Runtime can run it
    module_class: type[nn.Module] | None = None  # isscompress's own module for it, where PyTorch has none: how a
    # user's model holding one is recognised (its parameters are named as PyTorch's single-layer modules name theirs)
    variant_of: str | None = None  # the kind whose parameters and file layout it shares, differing only in the
    # settings it declares (a Keras 2 LSTM's hard-sigmoid gates): a file that declares them reads as this kind

    @property
    def projection(self) -> bool:
        """Whether the cell can project its output (proj_size)."""
        return any(p.only_with == "proj" for p in self.params)

    @property
    def deep(self) -> bool:
        """Whether the cell has a recurrence depth (micro-layers per time step)."""
        return any(p.per_depth for p in self.params)

    def layer_params(self, layer: LayerShape, bias: bool) -> tuple[CellParam, ...]:
        """The parameters one direction of ``layer`` has, per-depth ones named for their micro-layer."""
        if layer.depth != 1 and not self.deep:
            raise ValueError(f"{self.name} has no recurrence depth; depth must be 1, not {layer.depth}")
        present = {None, *(["bias"] if bias else []), *(["proj"] if layer.proj_size else [])}
        chosen: list[CellParam] = []
        for p in self.params:
            if p.only_with in present:
                chosen += [replace(p, name=f"{p.name}{d}") for d in range(layer.depth)] if p.per_depth else [p]
        return tuple(chosen)

    def shape(self, param: CellParam, layer: LayerShape) -> tuple[int, ...]:
        hidden, proj = layer.hidden_size, layer.proj_size
        rows = {"gates": self.gates * hidden, "units": hidden, "proj": proj}[param.rows]
        cols = {"input": layer.input_size, "recurrent": proj or hidden, "hidden": hidden, "units": hidden,
                None: None}[param.cols]
        return (rows,) if cols is None else (rows, cols)

    def state_widths(self, layer: LayerShape) -> tuple[int, ...]:
        """Width of each carried state: h is the (projected) output, c the cell."""
        return tuple((layer.proj_size or layer.hidden_size) if state == "h" else layer.hidden_size
                     for state in self.states)

    def macs(self, layer: LayerShape) -> int:
        """Multiply-adds per token and direction: one per matrix weight (elementwise work ignored)."""
        shapes = (self.shape(p, layer) for p in self.layer_params(layer, bias=False))
        return sum(rows * cols for rows, cols in shapes)


def _lstm(layer: LayerShape, bias: bool, bidirectional: bool) -> nn.Module:
    return nn.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size, bias=bias,
                   bidirectional=bidirectional)


def _gru(layer: LayerShape, bias: bool, bidirectional: bool) -> nn.Module:
    return nn.GRU(layer.input_size, layer.hidden_size, bias=bias, bidirectional=bidirectional)


def _rnn(nonlinearity: str) -> ModuleFactory:
    def make(layer: LayerShape, bias: bool, bidirectional: bool) -> nn.Module:
        return nn.RNN(layer.input_size, layer.hidden_size, nonlinearity=nonlinearity, bias=bias,
                      bidirectional=bidirectional)

    return make


def _hard_lstm(layer: LayerShape, bias: bool, bidirectional: bool) -> nn.Module:
    return HardSigmoidLSTM(layer.input_size, layer.hidden_size, bias=bias, bidirectional=bidirectional)


def _rhn(layer: LayerShape, bias: bool, bidirectional: bool) -> nn.Module:
    return RHNLayer(layer.input_size, layer.hidden_size, layer.depth, bias=bias)


MLSTM_PARAMS = (  # Krause et al.'s multiplicative LSTM (UniRep): gates from x and from m, m from x and from h
    CellParam("weight_ih", "gates", "input"),
    CellParam("weight_gm", "gates", "units"),
    CellParam("weight_mx", "units", "input"),
    CellParam("weight_mh", "units", "recurrent"),
    CellParam("bias_ih", "gates", None, "bias"),
)


def _mlstm(layer: LayerShape, bias: bool, bidirectional: bool) -> nn.Module:
    return MLSTMLayer(layer.input_size, layer.hidden_size, bias=bias)


RHN_PARAMS = (  # Zilly et al.: W (input, first micro-layer only), R^d and b^d per micro-layer; blocks H, T
    CellParam("weight_ih", "gates", "input"),
    CellParam("weight_hh", "gates", "recurrent", per_depth=True),
    CellParam("bias_hh", "gates", None, "bias", per_depth=True),
)


CELLS: dict[str, CellKind] = {
    cell.name: cell
    for cell in (
        CellKind("LSTM", 4, ("h", "c"), _lstm, (*RNN_PARAMS, PROJECTION), equations=(
            "PyTorch's nn.LSTM: gates i, f, o sigmoid, cell input g tanh, h = o * tanh(c); no peepholes, no "
            "layer norm, forget bias inside the weights"), int8=True, onnx=True),
        CellKind("GRU", 3, ("h",), _gru, equations=(
            "PyTorch's nn.GRU: gates r, z sigmoid, n = tanh(W x + b + r * (U h + b)) (reset after the recurrent "
            "product), h = (1 - z) * n + z * h"),
                 settings=(("reset_after", "on"), ("linear_before_reset", "on")), int8=True, onnx=True),
        CellKind("RNN_TANH", 1, ("h",), _rnn("tanh"), equations="PyTorch's nn.RNN: h = tanh(W x + b + U h + b)",
                 onnx=True),
        CellKind("RNN_RELU", 1, ("h",), _rnn("relu"), equations="PyTorch's nn.RNN: h = relu(W x + b + U h + b)",
                 settings=(("activation", "relu"),), onnx=True),
        CellKind("RHN", 2, ("h",), _rhn, RHN_PARAMS, bidirectional=False, equations=(
            "recurrent highway network: per micro-layer [h; t] = R s + b (+ W x first), "
            "s = tanh(h) * sigmoid(t) + s * (1 - sigmoid(t))"), module_class=RHNLayer),
        CellKind("MLSTM", 4, ("h", "c"), _mlstm, MLSTM_PARAMS, bidirectional=False, equations=(
            "multiplicative LSTM (Krause et al. 2016, as UniRep): m = (W_mx x) * (W_mh h), [i, f, o, u] = W_x x + "
            "W_m m + b, c = sigmoid(f) * c + sigmoid(i) * tanh(u), h = sigmoid(o) * tanh(c)"),
                 module_class=MLSTMLayer),
        CellKind("LSTM_HARD_SIGMOID", 4, ("h", "c"), _hard_lstm, RNN_PARAMS, equations=(
            "Keras 1/2's LSTM with recurrent_activation='hard_sigmoid': gates i, f, o clip(0.2 x + 0.5, 0, 1), cell "
            "input g tanh, h = o * tanh(c)"), settings=(("recurrent_activation", "hard_sigmoid"),),
                 module_class=HardSigmoidLSTM, variant_of="LSTM"),
    )
}


# Tables derived from CELLS are computed when asked, so a kind registered later (CELLS["X"] = CellKind(...)) is seen
# by file loading and tracing alike.
def param_names() -> tuple[str, ...]:
    """Regular-expression alternatives for every parameter name of the table (a per-depth one ends in its
    micro-layer)."""
    return tuple(dict.fromkeys(p.name + (r"\d+" if p.per_depth else "") for cell in CELLS.values()
                               for p in cell.params))


def recurrent_modules() -> tuple[type[nn.Module], ...]:
    """What a traced model's recurrent layers can be: PyTorch's layers and cells, and the table's own modules."""
    return (nn.RNNBase, nn.RNNCellBase, *(cell.module_class for cell in CELLS.values() if cell.module_class))


def gate_counts() -> str:
    """The gate counts of the table's kinds, for an error that lists them ("4 or 3 or 2 or 1")."""
    return " or ".join(str(g) for g in sorted({cell.gates for cell in CELLS.values()}, reverse=True))


def cell_of_module(module: nn.Module) -> CellKind | None:
    """The cell table's entry for a recurrent module of a user's model (PyTorch's layers and cells, ours), or
    None for a module that is not one."""
    for cell in CELLS.values():
        if cell.module_class is not None and isinstance(module, cell.module_class):
            return cell
    if not isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return None
    name = type(module).__name__.removesuffix("Cell")
    if name == "RNN":
        name = "RNN_RELU" if module.nonlinearity == "relu" else "RNN_TANH"
    return CELLS.get(name)


def cell_for_gates(gates: int) -> CellKind | None:
    """The cell kind a gate count implies when nothing else says (the first entry with that count)."""
    return next((cell for cell in CELLS.values() if cell.gates == gates), None)
