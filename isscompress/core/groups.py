"""The one description of ISS groups, and their per-unit norms.

Unit ``k`` of a :class:`GroupSet` is element ``start + k`` along ``axis`` of every member,
for every ``start`` of that member. Regularisation, thresholding, shrinking and reporting
all read this description, so they cannot disagree about which weights belong to a unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Member:
    """Slices of one tensor along one axis: unit k owns ``start + k`` for each start."""

    key: str
    axis: int
    starts: tuple[int, ...]


@dataclass(frozen=True)
class GroupSet:
    """All ISS groups of one set of units (a layer's cells in one direction, or its projection outputs).

    The set also declares the rules its kept width must obey, so that thresholding needs to know
    nothing about layers or directions: every set with the same ``same_width_as`` key keeps one
    width (both directions of a PyTorch RNN layer), and a set with ``narrower_than`` keeps fewer
    units than the sets of that key (``proj_size < hidden_size``). ``kind`` says whether the units are a recurrent
    layer's or other features (embedding dimensions, MLP hidden units), which ``iss.widths`` chooses between.
    """

    name: str
    size: int
    members: tuple[Member, ...]
    same_width_as: str = ""  # key shared by the sets that must keep equal widths ("" = only itself)
    narrower_than: str = ""  # key of the sets that must stay wider than this one ("" = no rule)
    label: str = ""  # what an error calls it, e.g. "layer 0 (its projection)"
    kind: str = "recurrent"  # "recurrent" (a layer's units) or "feature" (an embedding dimension, a Linear's outputs)
    # Tensors that follow the units without being weights (a BatchNorm's running mean and variance): a shrink cuts
    # them with the units, but they are in no norm, penalty, score or mask (a unit is removed by its weights alone)
    carried: tuple[Member, ...] = ()

    @property
    def width_key(self) -> str:
        return self.same_width_as or self.name

    def __post_init__(self) -> None:
        spans: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for member in self.members:
            for start in member.starts:
                spans.setdefault((member.key, member.axis), []).append((start, start + self.size))
        for (key, axis), ranges in spans.items():
            ranges.sort()
            for (_, end), (start, _) in zip(ranges, ranges[1:]):
                if start < end:
                    raise ValueError(
                        f"GroupSet {self.name}: members overlap on {key} axis {axis}; "
                        "each position may belong to a set only once"
                    )

    def overlaps(self) -> list[tuple[str, int, int]]:
        """``(key, row_start, col_start)`` where a row member and a column member of the same
        2-D tensor both contain element ``[row_start + k, col_start + k]`` for unit k.

        Such elements (the diagonal of ``weight_hh`` gate blocks) are in unit k's group once.
        """
        rows = [m for m in self.members if m.axis == 0]
        cols = [m for m in self.members if m.axis == 1]
        return [
            (r.key, rs, cs)
            for r in rows
            for c in cols
            if r.key == c.key
            for rs in r.starts
            for cs in c.starts
        ]


WIDTHS = ("all", "recurrent")  # which sets ISS and shrink act on: every width, or the recurrent layers' only


def chosen_sets(sets: Sequence[GroupSet], widths: str) -> tuple[GroupSet, ...]:
    """The sets ISS acts on: ``"all"`` of them, or only the recurrent layers' (``"recurrent"``, the paper's ISS)."""
    return tuple(gs for gs in sets if widths == "all" or gs.kind == "recurrent")


def member_slice(tensor: Tensor, member: Member, start: int, size: int) -> Tensor:
    """The ``size`` positions of ``member`` starting at ``start``, with the unit axis first."""
    return tensor.narrow(member.axis, start, size).movedim(member.axis, 0)


def _diagonal(tensor: Tensor, row: int, col: int, size: int) -> Tensor:
    return tensor[row : row + size, col : col + size].diagonal()


COLUMN_CHUNK_ROWS = 512  # a squared chunk of this many rows stays in cache


def _column_squares(matrix: Tensor) -> Tensor:
    """Per-column sum of squares of a 2-D tensor, row chunk by row chunk.

    A reduction down the columns of a large matrix (vector_norm(dim=0)) runs at a fraction of memory
    speed; squaring a cache-sized chunk and summing it with a matrix-vector product is about 3x faster
    (the decoder's columns are the largest single part of a shrink's norms). Differentiable. On an accelerator
    the plain reduction is fast and one kernel beats a launch per chunk."""
    if matrix.device.type != "cpu":
        return torch.linalg.vector_norm(matrix, dim=0).square()
    ones = matrix.new_ones(min(COLUMN_CHUNK_ROWS, matrix.shape[0]))
    total = None
    for chunk in matrix.split(COLUMN_CHUNK_ROWS):
        part = torch.mv(chunk.square().t(), ones[: chunk.shape[0]])
        total = part if total is None else total + part
    return total


def _member_squares(tensor: Tensor, member: Member, size: int) -> Tensor:
    """Per-unit sum of squares of one member, without copying strided slices."""
    blocks = len(member.starts)
    if member.axis == 0 and member.starts == tuple(range(0, blocks * size, size)) and tensor.shape[0] == blocks * size:
        # gate blocks: row norms in one pass (vector_norm reduces without a squared copy), then summed per unit
        rows = torch.linalg.vector_norm(tensor.reshape(blocks * size, -1), dim=1) if tensor.dim() > 1 else tensor.abs()
        return rows.square().view(blocks, size).sum(0)
    if member.axis == 1 and tensor.dim() == 2:
        columns = _column_squares(tensor)
        return sum(columns.narrow(0, start, size) for start in member.starts)
    others = [dim for dim in range(tensor.dim()) if dim != member.axis]
    total = None
    for start in member.starts:
        part = tensor.narrow(member.axis, start, size)
        part = torch.linalg.vector_norm(part, dim=others).square() if others else part.square()
        total = part if total is None else total + part
    return total


def unit_squared_norms(state: Mapping[str, Tensor], group_set: GroupSet) -> Tensor:
    """Sum of squares of every weight in each unit's group (shared diagonal counted once)."""
    size = group_set.size
    total = None
    for member in group_set.members:
        part = _member_squares(state[member.key], member, size)
        total = part if total is None else total + part
    for key, row, col in group_set.overlaps():
        total = total - _diagonal(state[key], row, col, size).pow(2)
    if total is None:
        raise ValueError(f"GroupSet {group_set.name} has no members")
    return total.clamp_min(0)


def unit_norms(state: Mapping[str, Tensor], group_set: GroupSet) -> Tensor:
    """L2 norm of each unit's group, vectorised over units."""
    with torch.no_grad():
        return unit_squared_norms(state, group_set).sqrt()


def all_unit_norms(state: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...]) -> dict[str, Tensor]:
    """Norms of every group set, by set name."""
    return {gs.name: unit_norms(state, gs).detach().float().cpu() for gs in group_sets}

