"""Which units to keep: groups whose norm is above a threshold, made shape-legal.

Each group set declares its width rules (PyTorch's recurrent layers force one width for both
directions of a layer, and ``proj_size < hidden_size``). Where the alive units break a rule we
keep a few more units, the strongest of the dead ones. That stays exact: the masked model the shrink is
checked against zeroes exactly the units that are not kept.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch
from torch import Tensor

from ..errors import ShrinkError
from .groups import GroupSet, chosen_sets


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


def widest_per_key(counts: Mapping[str, int], group_sets: tuple[GroupSet, ...]) -> dict[str, int]:
    """The largest count among the sets of each width key: the width a shrink keeps for all of them."""
    widest: dict[str, int] = {}
    for gs in group_sets:
        widest[gs.width_key] = max(widest.get(gs.width_key, 0), counts[gs.name])
    return widest


def targets_per_set(targets: Mapping[str, int], group_sets: tuple[GroupSet, ...]) -> dict[str, int]:
    """``iss.target_widths`` for every set it binds: a width named for one set holds for each set that keeps one width
    with it (both directions of a layer, the layers of one nn.LSTM), the smallest named for them if several are."""
    per_key: dict[str, int] = {}
    for gs in group_sets:
        if gs.name in targets:
            per_key[gs.width_key] = min(per_key.get(gs.width_key, targets[gs.name]), targets[gs.name])
    return {**targets, **{gs.name: per_key[gs.width_key] for gs in group_sets if gs.width_key in per_key}}


def legal_widths(counts: Mapping[str, int], group_sets: tuple[GroupSet, ...]) -> dict[str, int]:
    """The widths a shrink builds from ``counts[set]`` wanted units: every set of one ``same_width_as`` key at the
    widest of them, and a set's ``narrower_than`` sets at least one wider than it. The one place the width rules
    are resolved: thresholding, the budget's cost and the regulariser's widths all ask here."""
    widest = widest_per_key(counts, group_sets)
    for gs in group_sets:
        if gs.narrower_than:
            widest[gs.narrower_than] = max(widest[gs.narrower_than], widest[gs.width_key] + 1)
    return {gs.name: widest[gs.width_key] for gs in group_sets}


def select_kept(
    norms: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...], threshold: float, widths: str = "all"
) -> dict[str, Tensor]:
    """Sorted indices of the units to keep in each group set (norm > threshold, made legal by the
    width rules each set declares, the strongest dead units topped up). ``widths="recurrent"`` keeps every unit of
    the other sets (embedding dimensions, MLP units), whatever their norms."""
    chosen = chosen_sets(group_sets, widths)
    kept = _select_kept(norms, chosen, threshold)
    return {gs.name: kept[gs.name] if gs.name in kept else torch.arange(gs.size) for gs in group_sets}


def _select_kept(norms: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...], threshold: float
                 ) -> dict[str, Tensor]:
    alive = {gs.name: norms[gs.name] > threshold for gs in group_sets}
    counts = {name: int(mask.sum()) for name, mask in alive.items()}
    for gs in group_sets:  # every set of a width key dead: the layer would have no units at all
        tied = [other for other in group_sets if other.width_key == gs.width_key]
        if not any(counts[other.name] for other in tied):
            _refuse_empty(gs.label or gs.name, [norms[other.name] for other in tied], threshold)
    # one width per key first, then the narrower rule: each top-up takes the strongest dead units, and doing it in
    # this order keeps the choice among equal (zero) norms what it has always been (byte-identical shrinks)
    tied_widths = legal_widths(counts, tuple(replace(gs, narrower_than="") for gs in group_sets))
    alive = {gs.name: _top_up(norms[gs.name], alive[gs.name], tied_widths[gs.name]) for gs in group_sets}
    widths = legal_widths(tied_widths, group_sets)
    return {gs.name: _top_up(norms[gs.name], alive[gs.name], widths[gs.name]).nonzero().squeeze(1)
            for gs in group_sets}


def kept_widths(norms: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...], threshold: float,
                widths: str = "all") -> dict[str, int]:
    """Units per set a shrink at ``threshold`` would keep (the width rules applied); a set whose every unit is
    dead, which shrink refuses, counts 0. For progress and results during training."""
    try:
        return kept_counts(select_kept(norms, group_sets, threshold, widths))
    except ShrinkError:
        chosen = {gs.name for gs in chosen_sets(group_sets, widths)}
        return {gs.name: int((norms[gs.name] > threshold).sum()) if gs.name in chosen else gs.size
                for gs in group_sets}


def kept_counts(kept: Mapping[str, Tensor]) -> dict[str, int]:
    return {name: int(indices.numel()) for name, indices in kept.items()}
