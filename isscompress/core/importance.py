"""How much each unit matters, from the one group description: its norm, or a first-order Taylor estimate of the
loss change when its group is removed.

The Taylor score of a group (Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019) is
``(Σ_{w in group} g·w)²``: zeroing the group changes the loss by ``-Σ g·w`` to first order, and the square makes it
a magnitude. It is accumulated over a few batches (the square of each batch's sum, averaged), so a unit whose
weights are large but whose removal the loss does not feel scores low — which a norm cannot see.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .groups import GroupSet


def _member_sums(tensor: Tensor, member_axis: int, starts: tuple[int, ...], size: int) -> Tensor:
    others = [dim for dim in range(tensor.dim()) if dim != member_axis]
    along = tensor.sum(dim=others) if others else tensor
    return sum(along.narrow(0, start, size) for start in starts)


def unit_sums(values: Mapping[str, Tensor], group_set: GroupSet) -> Tensor:
    """Per unit, the sum of every element of its group in ``values`` (a position shared by a row and a column
    member, the diagonal of ``weight_hh``, counted once, as the norms count it)."""
    size = group_set.size
    total = sum(_member_sums(values[m.key], m.axis, m.starts, size) for m in group_set.members)
    for key, row, col in group_set.overlaps():
        total = total - values[key][row:row + size, col:col + size].diagonal()
    return total


def taylor_scores(params: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...]) -> dict[str, Tensor]:
    """``(Σ g·w)²`` per unit of every set, from the gradients now in ``params[...].grad`` (zero where none)."""
    keys = {m.key for gs in group_sets for m in gs.members}
    with torch.no_grad():
        products = {key: params[key] * params[key].grad if params[key].grad is not None
                    else torch.zeros_like(params[key]) for key in keys}
        return {gs.name: unit_sums(products, gs).square().detach().float().cpu() for gs in group_sets}
