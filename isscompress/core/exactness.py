"""The one exactness check of a shrink, for every architecture: the shrunk model against the original with the
removed units zeroed (the masked model), on the architecture's own probe.

An architecture says how to run a state on its probe (:meth:`Architecture.probe_outputs`) and which of the original's
output positions a shrunk model still returns (:meth:`Architecture.kept_outputs`); the comparison, its tolerance and
its error live here only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import torch
from torch import Tensor

from ..errors import ShrinkError
from .surgery import mask_state_dict

if TYPE_CHECKING:
    from .architecture import Architecture

# Relative to 1 + the largest |output|: the rounding of the dtype the probe ran in, with room for a deep stack.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-5}


@dataclass(frozen=True)
class Exactness:
    max_abs_diff: float  # shrunk against masked: the surgery's own error
    tolerance: float
    original_max_abs_diff: float  # shrunk against the original (equal to the above when nothing non-zero went)
    output_scale: float  # the original's largest |output| on the probe, to judge a difference by
    checked: bool = True  # False: the architecture cannot run (a model known only by its groups file)


def compute_dtype(state: Mapping[str, Tensor]) -> torch.dtype:
    """float64 and float32 states run as they are; half precision runs in float32."""
    dtype = next(iter(state.values())).dtype
    return dtype if dtype in TOLERANCE else torch.float32


def largest_difference(expected: Sequence[Tensor | None], actual: Sequence[Tensor | None]) -> tuple[float, float]:
    """(max |expected - actual| over all outputs, max |expected|). An output the architecture flattened to the kept
    positions is compared with the shrunk model's output flattened; integer outputs must be equal."""
    if len(expected) != len(actual):
        raise ShrinkError(f"The shrunk model returns {len(actual)} outputs where {len(expected)} were expected.",
                          "Its forward probably depends on sizes stored outside its layers.")
    worst = scale = 0.0
    for e, a in zip(expected, actual):
        if e is None or a is None:
            continue
        if e.dim() == 1 and a.dim() != 1 and e.numel() == a.numel():
            a = a.flatten()
        if e.shape != a.shape:
            raise ShrinkError(f"The shrunk model's output has shape {tuple(a.shape)} where {tuple(e.shape)} was "
                              "expected.", "Its forward probably uses sizes stored outside its layers.")
        if not e.numel():
            continue
        if e.is_floating_point():
            worst = max(worst, float((e - a).abs().max()))
            scale = max(scale, float(e.abs().max()))
        elif not torch.equal(e, a):
            worst = float("inf")
    return worst, scale


def check_shrunk(
    spec: "Architecture",
    state: Mapping[str, Tensor],
    small_spec: "Architecture",
    small_state: Mapping[str, Tensor],
    kept: Mapping[str, Tensor],
    *,
    in_place: bool = False,
    norms: Mapping[str, Tensor] | None = None,
    against_original: bool = False,
) -> Exactness:
    """Raise ShrinkError unless the shrunk model computes what the masked one does, within the tolerance of the
    dtype the probe ran in; return the differences.

    ``in_place`` masks the caller's ``state`` in place (memory stays near one model). With the units' ``norms``,
    removed units whose groups are already exactly zero (what ISS's proximal step leaves) are not masked again.
    ``against_original`` also runs the unmasked model, for a shrink that removes units that were not zero."""
    dtype = compute_dtype(state)
    got = small_spec.probe_outputs({k: v.to(dtype) for k, v in small_state.items()})
    converted = {k: v.to(dtype) for k, v in state.items()}
    original = spec.kept_outputs(spec.probe_outputs(converted), kept) if against_original else None
    to_zero = kept if norms is None else {  # "kept" for masking: the kept units and the already-zero ones
        name: torch.cat([indices.cpu(), (norms[name] == 0).nonzero().squeeze(1).cpu()]).unique()
        for name, indices in kept.items()}
    masked = mask_state_dict(converted, spec.group_sets(), to_zero, in_place=in_place)
    expected = spec.kept_outputs(spec.probe_outputs(masked), kept)
    diff, expected_scale = largest_difference(expected, got)
    gap, scale = largest_difference(original, got) if original is not None else (diff, expected_scale)
    ran_in = next((e.dtype for e in expected if e is not None and e.is_floating_point()), dtype)
    tolerance = TOLERANCE.get(ran_in, TOLERANCE[torch.float32]) * (1.0 + expected_scale)
    if not diff <= tolerance:
        raise ShrinkError(
            f"The shrunk model's outputs differ from the masked model's by {diff:.3g} (tolerance {tolerance:.3g}); "
            "nothing was written.",
            "If the groups came from a YAML file, check its members; otherwise this is a bug in isscompress: please "
            "report it with the model's layout or code.")
    return Exactness(diff, tolerance, gap, scale, checked=bool(expected))
