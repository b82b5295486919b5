"""The architecture of a recurrent model, in one canonical key layout.

Every family adapter renames a checkpoint's tensors into this layout: an optional ``encoder.weight``, a stack of
single-layer recurrent layers ``layers.{l}.{param}_l0[_reverse]`` (so each layer can have its own width after
shrinking), and an optional ``decoder`` (over the vocabulary, or a tagger's classes). From a :class:`ModelSpec` alone
we derive the expected shapes, the ISS group sets, and parameter and multiply-add counts.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.architecture import LayerInfo
from ..layers.cells import CELLS, CellKind, CellParam, param_names
from ..core.groups import GroupSet, Member
from ..errors import IsscompressError, ShapeError
from ..kernels import rnn_kernel

SUFFIXES = ("", "_reverse")
EMBEDDING = "embedding"  # the group set of an untied language model's embedding dimensions
def layer_key_pattern() -> re.Pattern[str]:
    """``layers.{l}.{param}_l0[_reverse]`` for every parameter of the cell table as it is now."""
    return re.compile(rf"^layers\.(\d+)\.({'|'.join(param_names())})_l0(_reverse)?$")


@dataclass(frozen=True)
class LayerSpec:
    """One recurrent layer: its input size, hidden width and optional projection width."""

    input_size: int
    hidden_size: int
    proj_size: int = 0
    depth: int = 1  # micro-layers per time step (a recurrent highway network's recurrence depth)

    @property
    def out_size(self) -> int:
        """Width of what one direction of this layer hands to the next."""
        return self.proj_size or self.hidden_size


@dataclass(frozen=True)
class ModelSpec:
    """The recurrent-stack architecture: optional embedding, a stack of recurrent layers of their own widths,
    optional decoder (tied or not). Implements :class:`isscompress.core.architecture.Architecture`."""

    kind: ClassVar[str] = "recurrent_stack"
    cell: str
    layers: tuple[LayerSpec, ...]
    bidirectional: bool = False
    bias: bool = True
    vocab_size: int = 0  # 0: a bare recurrent stack with no embedding and no decoder
    tied: bool = False
    decoder_bias: bool = True
    classes: int = 0  # the decoder's outputs when it labels each token rather than predicting the next (a tagger's)

    @property
    def decoder_size(self) -> int:  # the decoder's rows: the vocabulary, or a tagger's classes
        return self.classes or self.vocab_size

    @property
    def cell_kind(self) -> CellKind:
        return CELLS[self.cell]

    @property
    def equations(self) -> str:
        return self.cell_kind.equations

    @property
    def gates(self) -> int:
        return self.cell_kind.gates

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def is_language_model(self) -> bool:
        return self.vocab_size > 0

    @property
    def output_size(self) -> int:
        return self.directions * self.layers[-1].out_size

    @property
    def widths(self) -> list[int]:
        return [layer.hidden_size for layer in self.layers]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "ModelSpec":
        layers = tuple(LayerSpec(**layer) for layer in data["layers"])
        return cls(**{**data, "layers": layers})

    @classmethod
    def language_model(cls, cell: str, widths: Sequence[int], embedding: int, *, tied: bool = False,
                       depth: int = 1, vocab_size: int = 1) -> "ModelSpec":
        """Embedding → one recurrent layer per width → decoder; checked, so a wrong choice is a message."""
        if cell not in CELLS:
            raise IsscompressError(f"Unknown cell '{cell}'.", f"Use one of: {', '.join(CELLS)}.")
        if not widths or min(widths) < 1 or embedding < 1:
            raise IsscompressError("Widths and the embedding size must be positive.", "Give --width per layer.")
        if depth != 1 and not CELLS[cell].deep:
            deep = [name for name, kind in CELLS.items() if kind.deep]
            raise IsscompressError(f"A {cell} has no recurrence depth (--depth {depth}).",
                                   f"Depth is for {', '.join(deep)}; leave it out for {cell}.")
        if depth < 1:
            raise IsscompressError(f"The recurrence depth must be 1 or more, not {depth}.")
        if tied and embedding != widths[-1]:
            raise IsscompressError(f"A tied model needs --embedding equal to the last width ({widths[-1]}).")
        sizes = [embedding, *widths]
        layers = tuple(LayerSpec(sizes[i], width, 0, depth) for i, width in enumerate(widths))
        return cls(cell, layers, vocab_size=vocab_size, tied=tied)

    # The architecture contract: each method is one of the functions below.
    @classmethod
    def infer(cls, state: Mapping[str, Tensor], *, cell_hint: str | None = None, tied: bool = False) -> "ModelSpec":
        from .stack_inference import infer_spec  # it builds ModelSpecs

        return infer_spec(state, cell_hint=cell_hint, tied=tied)

    def group_sets(self) -> tuple[GroupSet, ...]:
        return group_sets(self)

    def with_kept(self, kept: Mapping[str, int] | Mapping[str, Tensor]) -> "ModelSpec":
        return shrunk_spec(self, {name: value if isinstance(value, int) else len(value) for name, value in kept.items()})

    def check(self, state: Mapping[str, Tensor]) -> None:
        check_shapes(state, self)

    def build(self, state: Mapping[str, Tensor], dropout: float = 0.0, variational: bool = False) -> nn.Module:
        from .stack_module import build_model  # the module imports this one

        return build_model(self, state, dropout, variational)

    def probe_inputs(self, steps: int = 6, batch: int = 3, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        if self.is_language_model:
            return torch.randint(0, self.vocab_size, (steps, batch), generator=generator)
        return torch.randn(steps, batch, self.layers[0].input_size, generator=generator, dtype=dtype)

    def probe_outputs(self, state: Mapping[str, Tensor]) -> list[Tensor]:
        """Two steps in each of two calls: the recurrence within a call and the state carried between calls are both
        checked, and a large model's weights are read only four times (the whole cost of a shrink's check)."""
        dtype = next(iter(state.values())).dtype
        inputs = self.probe_inputs(steps=2, batch=1, dtype=dtype)
        model = self.build(state)
        with torch.inference_mode(), rnn_kernel("native"):  # oneDNN is slow for a tiny probe batch
            first, hidden = model(inputs)
            second, _ = model(inputs.flip(0), hidden)
        return [torch.cat([first, second])]

    def kept_outputs(self, outputs: list[Tensor], kept: Mapping[str, Tensor]) -> list[Tensor]:
        """A language model keeps its logits; a bare stack keeps the last layer's kept units."""
        if self.is_language_model:
            return outputs
        last, layer = len(self.layers) - 1, self.layers[-1]
        role = "proj" if layer.proj_size else "cell"
        columns = torch.cat([kept[set_name(last, d, role)] + d * layer.out_size for d in range(self.directions)])
        return [output[..., columns] for output in outputs]

    def layer_info(self) -> tuple[LayerInfo, ...]:
        return tuple(LayerInfo(i, self.cell, layer.input_size, layer.hidden_size, self.directions, layer.proj_size,
                               layer.depth) for i, layer in enumerate(self.layers))

    def parameter_counts(self) -> dict[str, int]:
        return parameter_counts(self)

    def macs_per_token(self) -> dict[str, int]:
        return macs_per_token(self)


def layer_key(layer: int, param: str, direction: int = 0) -> str:
    return f"layers.{layer}.{param}_l0{SUFFIXES[direction]}"


def set_name(layer: int, direction: int = 0, role: str = "cell") -> str:
    """The name of a group set: ``layer1``, ``layer1.reverse``, ``layer1.proj``, ``layer1.reverse.proj``."""
    return f"layer{layer}" + (".reverse" if direction else "") + (".proj" if role == "proj" else "")


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the canonical layout (a tied decoder weight is not stored)."""
    shapes: dict[str, tuple[int, ...]] = {}
    cell = spec.cell_kind
    if spec.is_language_model:
        shapes["encoder.weight"] = (spec.vocab_size, spec.layers[0].input_size)
    for index, layer in enumerate(spec.layers):
        for direction in range(spec.directions):
            for param in cell.layer_params(layer, spec.bias):
                shapes[layer_key(index, param.name, direction)] = cell.shape(param, layer)
    if spec.is_language_model:
        if not spec.tied:
            shapes["decoder.weight"] = (spec.decoder_size, spec.output_size)
        if spec.decoder_bias:
            shapes["decoder.bias"] = (spec.decoder_size,)
    return shapes


def check_shapes(state: Mapping[str, Tensor], spec: ModelSpec) -> None:
    """Every expected tensor present with its expected shape, and nothing else."""
    expected = expected_shapes(spec)
    problems = [
        f"'{key}' is missing (expected shape {list(shape)})"
        for key, shape in expected.items()
        if key not in state
    ]
    problems += [
        f"'{key}' has shape {list(state[key].shape)}, expected {list(shape)}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    problems += [f"'{key}' is not part of this architecture" for key in state if key not in expected]
    if spec.bidirectional and not spec.cell_kind.bidirectional:
        problems.append(f"it has backward-direction ('_reverse') tensors, but {spec.cell} layers run forward only")
    if spec.tied and spec.layers[0].input_size != spec.output_size:
        problems.append(
            f"the tied embedding has {spec.layers[0].input_size} columns but the last layer outputs {spec.output_size}"
        )
    if problems:
        shown = "; ".join(problems[:6]) + ("; ..." if len(problems) > 6 else "")
        raise ShapeError(
            f"The tensors do not form one consistent {spec.cell} model "
            f"({len(spec.layers)} layer(s), widths {spec.widths}): {shown}.",
            "Check that the file is a complete, unmodified state dict; remove optimizer state or other extra tensors.",
        )


def group_sets(spec: ModelSpec) -> tuple[GroupSet, ...]:
    """The ISS group sets of a model: one per layer, direction and role (cell / projection), read off
    the cell table's parameter declarations.

    Unit k of a layer owns row k of every gate block it produces, the columns that read it back (the
    recurrent ones, or, with a projection, the projection's) and the columns of whatever consumes the
    layer's output. Both directions of a layer keep one width (PyTorch's bidirectional layers force
    it), and a projection keeps fewer units than its cells (``proj_size < hidden_size``). An untied language model's
    embedding dimensions are one more set (a ``feature`` set): dimension d is column d of the embedding and of the
    first layer's input weights.
    """
    sets: list[GroupSet] = []
    cell = spec.cell_kind
    for index, layer in enumerate(spec.layers):
        gate_starts = tuple(g * layer.hidden_size for g in range(spec.gates))
        params = cell.layer_params(layer, spec.bias)
        cells, projections = set_name(index), set_name(index, 0, "proj")
        label = f"layer {index}"
        for direction in range(spec.directions):
            own = partial(_own_members, params, index, direction)
            consumers = tuple(_consumers(spec, index, direction * layer.out_size))
            name = set_name(index, direction)
            if layer.proj_size:  # the cells feed the projection; the projection is what the others read
                sets.append(GroupSet(name, layer.hidden_size, own("gates", "hidden", gate_starts), cells, "", label))
                sets.append(GroupSet(set_name(index, direction, "proj"), layer.proj_size,
                                     own("proj", "recurrent", (0,)) + consumers, projections, cells,
                                     f"{label} (its projection)"))
            else:
                sets.append(GroupSet(name, layer.hidden_size, own("gates", "recurrent", gate_starts) + consumers,
                                     cells, "", label))
    if spec.is_language_model and not spec.tied:  # tied, the embedding's columns are the last layer's units
        inputs = [p.name for p in cell.params if p.cols == "input"]
        readers = tuple(Member(layer_key(0, name, d), 1, (0,)) for d in range(spec.directions) for name in inputs)
        sets.append(GroupSet(EMBEDDING, spec.layers[0].input_size, (Member("encoder.weight", 1, (0,)),) + readers,
                             EMBEDDING, "", "the embedding", kind="feature"))
    return tuple(sets)


def _own_members(params: tuple[CellParam, ...], index: int, direction: int, rows: str, cols: str,
                 starts: tuple[int, ...]) -> tuple[Member, ...]:
    """A layer's own parameters that belong to a set: the ``rows`` it produces, then the ``cols`` that read it; a
    cell's set (``rows="gates"``) also owns its ``units`` rows and the ``units`` columns that read them."""
    own_rows = {rows: starts, **({"units": (0,)} if rows == "gates" else {})}
    own_cols = {cols, *(["units"] if rows == "gates" else [])}
    return (tuple(Member(layer_key(index, p.name, direction), 0, own_rows[p.rows]) for p in params
                  if p.rows in own_rows)
            + tuple(Member(layer_key(index, p.name, direction), 1, (0,)) for p in params if p.cols in own_cols))


def _consumers(spec: ModelSpec, index: int, offset: int) -> list[Member]:
    """Columns that read layer ``index``'s output, at ``offset`` for its backward half."""
    inputs = [p.name for p in spec.cell_kind.params if p.cols == "input"]
    if index + 1 < len(spec.layers):
        return [Member(layer_key(index + 1, name, d), 1, (offset,)) for d in range(spec.directions) for name in inputs]
    if not spec.is_language_model:
        return []
    if not spec.tied:
        return [Member("decoder.weight", 1, (offset,))]
    # Tied: the decoder is the embedding, whose columns feed the first layer's input columns.
    return [Member("encoder.weight", 1, (offset,))] + [
        Member(layer_key(0, name, d), 1, (offset,)) for d in range(spec.directions) for name in inputs
    ]


def shrunk_spec(spec: ModelSpec, kept_counts: Mapping[str, int]) -> ModelSpec:
    """The spec after keeping ``kept_counts[set name]`` units of each group set."""
    layers = []
    for index, layer in enumerate(spec.layers):
        hidden = kept_counts[set_name(index)]
        proj = kept_counts[set_name(index, 0, "proj")] if layer.proj_size else 0
        input_size = kept_counts.get(EMBEDDING, layer.input_size) if index == 0 else \
            spec.directions * layers[-1].out_size
        layers.append(LayerSpec(input_size, hidden, proj, layer.depth))
    if spec.tied:
        embedding = spec.directions * layers[-1].out_size
        layers[0] = replace(layers[0], input_size=embedding)
    return replace(spec, layers=tuple(layers))


def parameter_counts(spec: ModelSpec) -> dict[str, int]:
    """Parameters split into embedding / recurrent / decoder (a tied matrix is counted once)."""
    counts = {"embedding": 0, "recurrent": 0, "decoder": 0}
    for key, shape in expected_shapes(spec).items():
        part = "embedding" if key.startswith("encoder.") else "decoder" if key.startswith("decoder.") else "recurrent"
        counts[part] += math.prod(shape)
    return counts


def macs_per_token(spec: ModelSpec) -> dict[str, int]:
    """Multiply-adds per token: the cells' (gate matmuls, projections) and the decoder's; lookups ignored."""
    recurrent = sum(spec.directions * spec.cell_kind.macs(layer) for layer in spec.layers)
    decoder = spec.decoder_size * spec.output_size if spec.is_language_model else 0
    return {"embedding": 0, "recurrent": recurrent, "decoder": decoder}
