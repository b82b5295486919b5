r"""The labels the any-model tracer keeps beside a model's values, and what one run of it finds.

A label tensor has the shape of the value it follows: element ``[...]`` is the id of the recurrent unit whose
output that element is, ``UNLABELED`` for values that are not a unit's output, or ``ZERO`` for values that are
exactly zero whatever the units. Units are numbered in :class:`UnitRange`\ s (one per layer, direction and kind
of a recurrent module); a :class:`Flow` collects the ranges, the weight positions that read each unit and the
couplings. The operation families below say how labels move through each torch function (:mod:`.tracer`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import IsscompressError

UNLABELED = -1
ZERO = -2

Position = tuple[str, int, int]  # (state-dict key, axis, index)


class TraceError(IsscompressError):
    """The model does something to a hidden feature that ISS cannot follow exactly."""


HINT = ("Write the model's groups by hand in a YAML groups file (the format is in docs/any-model.md; "
        "`isscompress inspect MODEL --arch FILE.py:FACTORY --save-groups groups.yaml` writes one for a model it can "
        "follow, such as yours with the refused operation taken out, to start from) and pass it with --groups; or "
        "change the model so that hidden features reach weights through the supported operations.")

# Operations applied to the label tensor exactly as to the value: they move, copy or select elements.
STRUCTURAL = frozenset("""
__getitem__ view reshape flatten unflatten squeeze unsqueeze transpose swapaxes swapdims permute t contiguous
clone detach cat concat concatenate stack hstack split split_with_sizes chunk tensor_split narrow select
index_select expand expand_as repeat flip movedim moveaxis unbind roll view_as reshape_as
_pack_padded_sequence _pad_packed_sequence pad
""".split())
# Elementwise and zero in, zero out: the labels pass through unchanged.
ZERO_PRESERVING = frozenset("""
relu relu_ tanh tanh_ dropout dropout_ alpha_dropout feature_alpha_dropout dropout1d dropout2d gelu elu elu_
leaky_relu leaky_relu_ selu silu mish hardtanh hardtanh_ relu6 softsign tanhshrink neg __neg__ abs sign square
sqrt to type float double half bfloat16 cpu cuda requires_grad_ __pos__
""".split())
PRODUCTS = frozenset("mul __mul__ __rmul__ mul_ __imul__ div __truediv__ true_divide div_ __itruediv__".split())
SUMS = frozenset("add __add__ __radd__ add_ __iadd__ sub __sub__ __rsub__ sub_ __isub__ maximum minimum".split())
REDUCTIONS = frozenset("sum mean max min amax amin nansum nanmean".split())
MATMULS = frozenset("matmul __matmul__ __rmatmul__ mm bmm".split())
ZEROS = frozenset("zeros zeros_like new_zeros zero_".split())  # exactly zero whatever went in
POOLING = frozenset("max_pool1d avg_pool1d adaptive_max_pool1d adaptive_avg_pool1d lp_pool1d".split())
FRESH = frozenset("new ones_like empty_like full_like rand_like randn_like randint_like new_ones new_full new_empty "
                  "new_tensor".split())  # new values shaped like their input: not hidden features
METADATA = frozenset("""
size dim numel __len__ is_contiguous is_floating_point element_size stride __get__ __format__ __bool__ item
tolist __index__ __repr__ __hash__ data_ptr get_device _is_view nelement ndimension
""".split())
# Comparisons and tests of hidden features: their results are masks, not features (a mask may choose where to fill)
COMPARISONS = frozenset("""
eq __eq__ ne __ne__ lt __lt__ le __le__ gt __gt__ ge __ge__ isnan isinf isfinite isneginf isposinf logical_not
""".split())
FILLS = frozenset("masked_fill masked_fill_ __setitem__".split())  # constants written into features
# Modules whose output features are a width too (an embedding dimension, a Linear's or Conv1d's output unit): each
# is tried as a set of its own, kept where its features reach only weights through exact operations
MATRIX_MODULES = (nn.Linear, nn.Conv1d)  # their multiply-adds are counted per run (heads, projections)
FEATURE_MODULES = (nn.Embedding, *MATRIX_MODULES)


def feature_axis(module: nn.Module) -> int:
    """The axis of the module's output that holds its features: a Conv1d's channels, else the last."""
    return -2 if isinstance(module, nn.Conv1d) else -1


def feature_positions(module: nn.Module, path: str, unit: int) -> set[Position]:
    """What output feature ``unit`` of the module owns: an embedding's column, or a Linear's / Conv1d's output row and
    its bias element (the unit's output is then exactly zero)."""
    prefix = f"{path}." if path else ""
    if isinstance(module, nn.Embedding):
        return {(prefix + "weight", 1, unit)}
    return {(prefix + "weight", 0, unit)} | ({(prefix + "bias", 0, unit)} if module.bias is not None else set())


def feature_width(module: nn.Module) -> int:
    """How many output features the module makes: embedding dimensions, output units or channels."""
    if isinstance(module, nn.Embedding):
        return module.embedding_dim
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@dataclass(frozen=True)
class UnitRange:
    """The units of one direction of one layer of a recurrent module: global ids ``first .. first+size-1``.

    ``kind`` is ``hidden`` (the cells), ``proj`` (an LSTM's projected outputs, ``proj_size``) or ``feature`` (the
    output features of an nn.Embedding, nn.Linear or nn.Conv1d: embedding dimensions, MLP hidden units)."""

    module: str
    layer: int
    direction: int
    kind: str
    size: int
    first: int

    @property
    def name(self) -> str:
        if self.kind == "feature":
            return self.module
        where = f"{self.module}.l{self.layer}" if self.module else f"l{self.layer}"
        return where + (".reverse" if self.direction else "") + (".proj" if self.kind == "proj" else "")

    def contains(self, unit: int) -> bool:
        return self.first <= unit < self.first + self.size


@dataclass
class Flow:
    """What one run found: the unit ranges of every recurrent module it called, the weight positions that
    read each unit (beyond the module's own), the couplings, and the labels of the model's outputs."""

    ranges: list[UnitRange] = field(default_factory=list)
    readers: dict[int, set[Position]] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)  # union-find over unit ids
    consumers: dict[str, set[str]] = field(default_factory=dict)  # range name -> modules/weights reading it
    output_labels: Any = None
    modules: dict[str, nn.Module] = field(default_factory=dict)  # recurrent module path -> module
    # example-input leaf index -> labels: a state the caller hands in (pytorch/examples' init_hidden) is the layer's
    # own units, shrunk with them
    input_labels: dict[int, Tensor] = field(default_factory=dict)
    # a weight shared under several names (a decoder tied to its embedding): member keys use the first name, and
    # every other name is an alias the surgery gives the same slices; columns read by units, per shared weight
    aliases: dict[str, str] = field(default_factory=dict)
    tied_columns: dict[int, Tensor] = field(default_factory=dict)  # id(parameter) -> unit per column (-1: none)
    # positions each nn.Linear / nn.Conv1d (module path) and each recurrent module computed on the example inputs:
    # how often a head runs per time step of the recurrent layers, for its multiply-adds per token
    positions: dict[str, int] = field(default_factory=dict)
    products: int = 0  # multiply-adds of products of two computed tensors (attention) on the example inputs
    # tensors read at a unit's position that are not weights (a BatchNorm's running statistics): cut with the unit
    carried_keys: set[str] = field(default_factory=set)
    # weight positions that some call read with values that are no unit's features: such a position cannot go with
    # a unit (an LSTM reading an embedding at some steps and an image feature at another)
    foreign: set[Position] = field(default_factory=set)

    def find(self, unit: int) -> int:
        root = unit
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(unit, unit) != root:  # path compression
            self.parent[unit], unit = root, self.parent[unit]
        return root

    def couple(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def range_of(self, unit: int) -> UnitRange:
        for r in self.ranges:
            if r.contains(unit):
                return r
        raise KeyError(unit)


def is_cell(module: nn.Module) -> bool:
    """An nn.LSTMCell / GRUCell / RNNCell: one layer, one direction, one step per call, its state without a layer
    axis, its weights named without a layer suffix."""
    return isinstance(module, nn.RNNCellBase)


def weight_name(module: nn.Module, name: str, layer: int = 0, direction: int = 0) -> str:
    """``weight_ih_l1_reverse`` for a layer of an nn.LSTM, plain ``weight_ih`` for a cell."""
    return name if is_cell(module) else f"{name}_l{layer}{'_reverse' if direction else ''}"


def recurrent_shape(module: nn.Module) -> tuple[int, int, int, int, int]:
    """(layers, directions, hidden, proj, gates) of an nn.LSTM / nn.GRU / nn.RNN, of a cell, or of one of the cell
    table's own single-layer modules (an RHN layer)."""
    hidden = module.hidden_size
    proj = getattr(module, "proj_size", 0) or 0
    gates = getattr(module, weight_name(module, "weight_ih")).shape[0] // hidden
    if is_cell(module):
        return 1, 1, hidden, 0, gates
    return getattr(module, "num_layers", 1), 2 if getattr(module, "bidirectional", False) else 1, hidden, proj, gates


def uniform_along(labels: Tensor, axis: int) -> Tensor | None:
    """``labels`` reduced over ``axis`` when every line along it holds one label (exact zeros aside)."""
    known = labels != ZERO
    big = torch.iinfo(torch.long).max
    low = torch.where(known, labels, big).amin(axis)
    high = torch.where(known, labels, -big).amax(axis)
    if bool((known.any(axis) & (low != high)).any()):
        return None
    return torch.where(known.any(axis), low, ZERO)


def fill(like: Tensor, value: int) -> Tensor:
    return torch.full(like.shape, value, dtype=torch.long)
