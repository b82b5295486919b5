"""Reading a recurrent stack's architecture off its tensors (canonical layout), every shape checked."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

from torch import Tensor

from ..layers.cells import CELLS, CellKind, CellParam, cell_for_gates, gate_counts
from ..errors import ShapeError
from .stack import LayerSpec, ModelSpec, check_shapes, layer_key, layer_key_pattern



def _shape_of(state: Mapping[str, Tensor], key: str, dims: int) -> tuple[int, ...]:
    if key not in state:
        raise ShapeError(f"Tensor '{key}' is missing.", "The checkpoint is incomplete; save the full state dict.")
    shape = tuple(state[key].shape)
    if len(shape) != dims:
        raise ShapeError(f"Tensor '{key}' has shape {list(shape)}; a {dims}-D tensor was expected.")
    return shape


@dataclass(frozen=True)
class _Names:
    """Which parameter plays which part, from the cell table: the hinted cell's names, else those of the
    first cell whose names the tensors use (PyTorch's when none does, so errors name PyTorch's keys)."""

    input: str  # gate rows x input columns
    recurrent: str  # gate rows x recurrent columns (the first micro-layer's, for a deep cell)
    projection: str | None
    bias: str | None
    deep: bool  # one recurrent matrix per micro-layer: weight_hh0, weight_hh1, ...
    cell: str = ""  # the kind these names were read from (kinds that share names are told apart by gate count)

    @classmethod
    def of(cls, cell: CellKind) -> "_Names":
        def first(test) -> CellParam | None:
            return next((p for p in cell.params if test(p)), None)

        recurrent = first(lambda p: p.cols == "recurrent")
        projection, bias = first(lambda p: p.rows == "proj"), first(lambda p: p.only_with == "bias")
        return cls(first(lambda p: p.rows == "gates" and p.cols == "input").name,
                   recurrent.name + ("0" if recurrent.per_depth else ""), projection and projection.name,
                   bias and (bias.name + ("0" if bias.per_depth else "")), recurrent.per_depth, cell.name)

    @classmethod
    def find(cls, state: Mapping[str, Tensor], cell_hint: str | None) -> "_Names":
        if cell_hint in CELLS:
            return cls.of(CELLS[cell_hint])
        for cell in CELLS.values():
            names = cls.of(cell)
            if layer_key(0, names.input) in state and layer_key(0, names.recurrent) in state:
                return names
        return cls.of(CELLS["LSTM"])

    def depth(self, state: Mapping[str, Tensor], index: int) -> int:
        if not self.deep:
            return 1
        stem, depth = self.recurrent[:-1], 0  # the recurrent name of micro-layer 0 ends in "0"
        while layer_key(index, f"{stem}{depth}") in state:
            depth += 1
        return depth


def _infer_layer(state: Mapping[str, Tensor], index: int, names: _Names) -> tuple[LayerSpec, int]:
    """Width, projection, input size, depth and gate count of layer ``index`` from its own tensors."""
    input_key = layer_key(index, names.input)
    rows, input_size = _shape_of(state, input_key, 2)
    proj_key = layer_key(index, names.projection) if names.projection else None
    if proj_key in state:
        proj_size, hidden = _shape_of(state, proj_key, 2)
    else:
        proj_size, hidden = 0, _shape_of(state, layer_key(index, names.recurrent), 2)[1]
    if hidden == 0 or rows % hidden or cell_for_gates(rows // hidden) is None:
        width_key = proj_key if proj_size else layer_key(index, names.recurrent)
        raise ShapeError(
            f"Layer {index}: '{input_key}' has {rows} rows, which is not {gate_counts()} "
            f"times the hidden width {hidden} that '{width_key}' implies ({', '.join(CELLS)}).",
            "Check that the checkpoint holds a recurrent model of a supported cell type.",
        )
    return LayerSpec(input_size, hidden, proj_size, names.depth(state, index)), rows // hidden


def _classes(state: Mapping[str, Tensor], vocab_size: int, tied: bool) -> int:
    """A decoder of other than the vocabulary's size, its bias agreeing, labels each token (a tagger): its rows are
    the classes. A weight and bias that disagree are damage, which the shape check names."""
    decoder, bias = state.get("decoder.weight"), state.get("decoder.bias")
    if tied or not vocab_size or decoder is None or decoder.dim() != 2 or decoder.shape[0] == vocab_size:
        return 0
    if bias is not None and tuple(bias.shape) != (decoder.shape[0],):
        return 0
    return int(decoder.shape[0])


def infer_spec(
    state: Mapping[str, Tensor], *, cell_hint: str | None = None, tied: bool = False
) -> ModelSpec:
    """Read a ModelSpec off canonical tensors and check every shape against it."""
    pattern = layer_key_pattern()
    indices = sorted({int(m.group(1)) for key in state if (m := pattern.match(key))})
    if not indices:
        raise ShapeError("No recurrent layer tensors were found.")
    if indices != list(range(len(indices))):
        raise ShapeError(f"Recurrent layers are numbered {indices}; layers must be numbered 0..N-1 without gaps.")
    names = _Names.find(state, cell_hint)
    inferred = [_infer_layer(state, i, names) for i in indices]
    counts = {gates for _, gates in inferred}
    if len(counts) != 1:
        raise ShapeError("Layers disagree on the cell type (their gate counts differ).")
    gates = counts.pop()
    cell = names.cell if names.cell in CELLS and CELLS[names.cell].gates == gates else cell_for_gates(gates).name
    if cell_hint is not None:
        if cell_hint not in CELLS or CELLS[cell_hint].gates != CELLS[cell].gates:
            raise ShapeError(f"The checkpoint says the cell is {cell_hint}, but its weights have the shape of a {cell}.")
        cell = cell_hint
    vocab_size = state["encoder.weight"].shape[0] if "encoder.weight" in state else 0
    bidirectional = layer_key(0, names.input, 1) in state
    layers = [layer for layer, _ in inferred]
    for index in range(1, len(layers)):  # a layer's input is what the previous one outputs
        layers[index] = replace(layers[index], input_size=(2 if bidirectional else 1) * layers[index - 1].out_size)
    spec = ModelSpec(
        cell=cell,
        layers=tuple(layers),
        bidirectional=bidirectional,
        bias=names.bias is not None and layer_key(0, names.bias) in state,
        vocab_size=vocab_size,
        tied=tied,
        decoder_bias="decoder.bias" in state,
        classes=_classes(state, vocab_size, tied),
    )
    check_shapes(state, spec)
    return spec
