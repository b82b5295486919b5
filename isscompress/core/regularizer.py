"""Group Lasso on ISS groups: the paper's sub-gradient and an exact-zero proximal step.

Both read the per-unit norms of :mod:`isscompress.groups`, computed once per step. The
sub-gradient ``lambda * w / ||w_g||`` is added straight into ``.grad`` (same gradient as
putting the penalty in the loss, at a fifth of the cost at H=1500; ../shared/MEASURED.md).
Groups overlap (``weight_hh[row j, column k]`` belongs to units j and k), so the proximal
step computes every norm first and then scales each weight by the product of the factors of
the groups it belongs to: the result does not depend on the order of the groups.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .groups import GroupSet, member_slice, unit_squared_norms
from .surgery import mask_state_dict

EPS = 1e-12


Lambdas = Mapping[str, "float | Tensor"]  # per group set: one value, or one per unit


def lambdas_for(group_sets: tuple[GroupSet, ...], base: float, multipliers: Mapping[str, float]) -> dict[str, float]:
    """lambda per group set: the base times its multiplier (by set name, e.g. ``layer1``)."""
    return {gs.name: base * multipliers.get(gs.name, 1.0) for gs in group_sets}


@torch.no_grad()
def reweighted(lambdas: Mapping[str, float], norms: Mapping[str, Tensor], exponent: float) -> Lambdas:
    """Reweighted group Lasso: ``lambda_g = lambda * (mean alive norm / ||w_g||) ** exponent``.

    Plain group Lasso (exponent 0) shrinks every group by the same amount per step, so the units
    that survive are shrunk as much as the ones that die, and all die late and together. Weighting
    each group by the inverse of its own norm (Candes, Wakin & Boyd 2008, recomputed every step from
    the norms the step computes anyway) spreads the deaths out and leaves strong units nearly
    unbiased. The set's mean alive norm keeps ``lambda`` on the plain scale.
    """
    if exponent == 0:
        return lambdas
    weighted: dict[str, Tensor] = {}
    for name, norm in norms.items():
        alive = norm > 0
        mean = norm[alive].mean() if bool(alive.any()) else norm.new_ones(())
        weighted[name] = lambdas[name] * (mean / norm.clamp_min(EPS)).pow(exponent) * alive
    return weighted


@torch.no_grad()
def group_norms(params: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...]) -> dict[str, Tensor]:
    return {gs.name: unit_squared_norms(params, gs).sqrt() for gs in group_sets}


def penalty(norms: Mapping[str, Tensor], lambdas: Lambdas) -> float:
    """The group-Lasso term ``sum lambda_g * ||w_g||`` (for logging; gradients come from add_subgradient)."""
    return float(sum((lambdas[name] * values).sum() for name, values in norms.items()))


def _broadcast(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def add_subgradient(
    params: Mapping[str, Tensor],
    group_sets: tuple[GroupSet, ...],
    lambdas: Lambdas,
    norms: Mapping[str, Tensor],
) -> None:
    """``grad += lambda * w / ||w_g||`` for every group (0 for a group that is exactly zero)."""
    for gs in group_sets:
        norm = norms[gs.name]
        coefficient = torch.where(norm > EPS, lambdas[gs.name] / norm.clamp_min(EPS), torch.zeros_like(norm))
        for member in gs.members:
            weight, grad = params[member.key], params[member.key].grad
            if grad is None:
                continue
            for start in member.starts:
                w = member_slice(weight, member, start, gs.size)
                member_slice(grad, member, start, gs.size).add_(w * _broadcast(coefficient, w))
        for key, row, col in gs.overlaps():  # the shared diagonal got the term twice
            grad = params[key].grad
            if grad is not None:
                index = torch.arange(gs.size, device=grad.device)
                grad[row + index, col + index] -= coefficient * params[key][row + index, col + index]


@torch.no_grad()
def proximal_step(
    params: Mapping[str, Tensor],
    group_sets: tuple[GroupSet, ...],
    lambdas: Lambdas,
    lr: float,
    norms: Mapping[str, Tensor] | None = None,
    frozen: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Group soft-thresholding ``w_g *= max(0, 1 - lr*lambda/||w_g||)``, order-free; exact zeros.

    Units marked True in ``frozen`` are set to zero whatever their norm. Returns the factors
    (0 where a group is now exactly zero)."""
    norms = norms if norms is not None else group_norms(params, group_sets)
    factors = {
        gs.name: (1 - lr * lambdas[gs.name] / norms[gs.name].clamp_min(EPS)).clamp_min(0) for gs in group_sets
    }
    if frozen is not None:
        factors = {name: factor.masked_fill(frozen[name], 0) for name, factor in factors.items()}
    for gs in group_sets:
        factor = factors[gs.name]
        for member in gs.members:
            for start in member.starts:
                w = member_slice(params[member.key], member, start, gs.size)
                w.mul_(_broadcast(factor, w))
        for key, row, col in gs.overlaps():  # the shared diagonal was scaled twice; undo once
            index = torch.arange(gs.size, device=factor.device)
            diagonal = params[key][row + index, col + index]
            params[key][row + index, col + index] = torch.where(factor > 0, diagonal / factor.clamp_min(EPS), diagonal)
    return factors


@torch.no_grad()
def zero_small_weights(params: Mapping[str, Tensor], keys: set[str], threshold: float) -> None:
    """Set every weight with ``|w| < threshold`` to 0 in the given tensors (iss-rnns' way to reach zeros)."""
    for key in keys:
        weight = params[key]
        weight.masked_fill_(weight.abs() < threshold, 0)


@torch.no_grad()
def zero_dead_groups(
    params: Mapping[str, Tensor], group_sets: tuple[GroupSet, ...], norms: Mapping[str, Tensor]
) -> dict[str, int]:
    """Keep groups whose norm is exactly 0 at 0 (the optimizer's momentum or weight decay would revive
    them); returns how many units are still alive per set."""
    kept = {gs.name: (norms[gs.name] > 0).nonzero().squeeze(1).cpu() for gs in group_sets}
    if any(len(k) < gs.size for gs, k in zip(group_sets, kept.values())):
        mask_state_dict(params, group_sets, kept, in_place=True)
    return {name: int(k.numel()) for name, k in kept.items()}


def regularized_keys(group_sets: tuple[GroupSet, ...]) -> set[str]:
    return {member.key for gs in group_sets for member in gs.members}
