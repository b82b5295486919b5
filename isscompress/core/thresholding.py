"""Which units to keep: groups whose norm is above a threshold, made shape-legal.

Each group set declares its width rules (PyTorch's recurrent layers force one width for both
directions of a layer, and ``proj_size < hidden_size``). Where the alive units break a rule we
keep a few more units, the strongest of the dead ones. That stays exact: the masked model the shrink is
checked against zeroes exactly the units that are not kept.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from ..errors import ShrinkError
from .groups import GroupSet


def _refuse_empty(name: str, norms: list[Tensor], threshold: float) -> None:
    largest = max(float(n.max()) for n in norms)
    hint = (f"Use a threshold below {largest:.4g}, or fine-tune" if largest > 0 else "Fine-tune") + \
        " this layer with a smaller lambda (iss.layer_multipliers)."
    raise ShrinkError(
        f"Shrinking would remove every unit of {name}: its largest ISS group norm is {largest:.4g} "
        f"and the threshold is {threshold:.4g}.", hint)


def _top_up(norms: Tensor, alive: Tensor, count: int) -> Tensor:
    """``alive`` plus the strongest dead units until ``count`` units are kept."""
    missing = count - int(alive.sum())
    if missing <= 0:
        return alive
    candidates = torch.where(alive, torch.full_like(norms, -1.0), norms)
    extra = torch.topk(candidates, missing).indices
    alive = alive.clone()
    alive[extra] = True
    return alive


def select_kept(
    norms: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...], threshold: float
) -> dict[str, Tensor]:
    """Sorted indices of the units to keep in each group set (norm > threshold, made legal by the
    width rules each set declares)."""
    alive = {gs.name: norms[gs.name] > threshold for gs in group_sets}
    tied: dict[str, list[GroupSet]] = {}
    for gs in group_sets:
        tied.setdefault(gs.width_key, []).append(gs)

    for sets in tied.values():
        counts = [int(alive[gs.name].sum()) for gs in sets]
        if max(counts) == 0:
            _refuse_empty(sets[0].label or sets[0].name, [norms[gs.name] for gs in sets], threshold)
        for gs in sets:  # one width for every set of the key
            alive[gs.name] = _top_up(norms[gs.name], alive[gs.name], max(counts))

    for gs in group_sets:
        if gs.narrower_than:
            narrow = int(alive[gs.name].sum())
            for wider in tied[gs.narrower_than]:
                alive[wider.name] = _top_up(norms[wider.name], alive[wider.name], narrow + 1)

    return {name: mask.nonzero().squeeze(1) for name, mask in alive.items()}


def kept_widths(norms: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...], threshold: float) -> dict[str, int]:
    """Units per set a shrink at ``threshold`` would keep (the width rules applied); a set whose every unit is
    dead, which shrink refuses, counts 0. For progress and results during training."""
    try:
        return kept_counts(select_kept(norms, group_sets, threshold))
    except ShrinkError:
        return {gs.name: int((norms[gs.name] > threshold).sum()) for gs in group_sets}


def kept_counts(kept: Mapping[str, Tensor]) -> dict[str, int]:
    return {name: int(indices.numel()) for name, indices in kept.items()}
