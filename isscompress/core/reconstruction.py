"""Repairing what removal costs, without labels or gradients: the kept units stand in for the removed ones.

After units R of a set are removed, every weight that read them loses ``W[:, R] h_R``. Fitting ``h_R ≈ A h_K + c`` by
least squares on the units' values recorded from the original model (unlabelled inputs), and folding the fit into
every reader — ``W[:, K] += W[:, R] A``, ``b += W[:, R] c`` — keeps each reader's pre-activation as close to the
original's as the kept units allow: the reconstruction step of channel pruning (He et al., ICCV 2017), on ISS
groups. A removed unit that duplicates a kept one is removed exactly. The readers are the set's column members (the
next layer's input weights, the recurrent weights' columns, a decoder or head), read off the one group description.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .groups import GroupSet, Member

RIDGE = 1e-6  # relative to the kept units' mean variance: keeps the fit defined when two kept units are equal


def fit_removed(values: Tensor, kept: Tensor, removed: Tensor) -> tuple[Tensor, Tensor]:
    """``(A, c)`` with ``values[:, removed] ≈ values[:, kept] @ A.T + c``, least squares in float64 (ridge-damped).

    ``values``: ``[samples, units]``, the set's units as the original model computed them."""
    x, y = values[:, kept].double(), values[:, removed].double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    damping = RIDGE * float(gram.diagonal().mean().clamp_min(1e-12))
    a = torch.linalg.solve(gram + damping * torch.eye(len(kept), dtype=gram.dtype), xc.T @ yc).T
    return a, y_mean - a @ x_mean


def fold_into_readers(state: Mapping[str, Tensor], readers: Mapping[Member, str | None], kept: Tensor,
                      removed: Tensor, a: Tensor, c: Tensor) -> None:
    """Fold ``h_R ≈ A h_K + c`` into every reader of the set, in place: ``readers`` maps each column member to the
    bias its weight adds to (None when it has none, and ``c`` is then left out)."""
    with torch.no_grad():
        for member, bias in readers.items():
            weight = state[member.key]
            fit, shift = a.to(weight.device), c.to(weight.device)  # the fit is made on the CPU; the model may not be
            for start in member.starts:
                lost = weight[:, start + removed.to(weight.device)].double()
                weight[:, start + kept.to(weight.device)] += (lost @ fit).to(weight.dtype)
                if bias is not None:
                    state[bias] += (lost @ shift).to(weight.dtype)


def column_readers(group_set: GroupSet, state: Mapping[str, Tensor], producers: set[str]) -> dict[Member, str | None]:
    """The set's members that read its units as input columns of a matrix (axis 1 of a 2-D weight that is not a
    producer of the units, such as an embedding), each with the bias its weight's outputs add, when it has one
    (``x.weight`` -> ``x.bias``, ``weight_ih_l0`` -> ``bias_ih_l0``)."""
    found: dict[Member, str | None] = {}
    for member in group_set.members:
        if member.axis != 1 or member.key in producers or member.key not in state or state[member.key].dim() != 2:
            continue
        prefix, _, name = member.key.rpartition(".")
        bias = (f"{prefix}." if prefix else "") + name.replace("weight", "bias", 1)
        found[member] = bias if bias in state and bias != member.key else None
    return found
