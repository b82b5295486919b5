"""``shrink``: remove every unit whose ISS group norm is at most a threshold, checked, then written."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..io.files import FORMAT_VERSION, check_output_path, sha256_file, write_checkpoint
from ..errors import ShrinkError
from ..core.groups import GroupSet, all_unit_norms
from ..io.loading import Checkpoint, derived_metadata, load_checkpoint
from ..architectures.stack_module import build_model, probe_inputs, rnn_kernel
from ..architectures.stack import ModelSpec, shrunk_spec
from ..measure.summary import ModelSummary, summarize
from ..core.surgery import mask_state_dict, shrink_state_dict
from ..core.thresholding import kept_counts, select_kept

TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-5}


@dataclass(frozen=True)
class ShrinkResult:
    source: Path
    output: Path
    threshold: float
    before: ModelSummary
    after: ModelSummary
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    max_abs_diff: float
    tolerance: float

    def to_dict(self) -> dict:
        return {
            "source": str(self.source), "output": str(self.output), "threshold": self.threshold,
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "widths_before": self.widths_before, "widths_after": self.widths_after,
            "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
        }


def _compute_dtype(state: Mapping[str, Tensor]) -> torch.dtype:
    dtype = next(iter(state.values())).dtype
    return dtype if dtype in TOLERANCE else torch.float32


def _outputs(spec: ModelSpec, state: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
    model = build_model(spec, state)
    with torch.inference_mode(), rnn_kernel("native"):  # oneDNN is slow for a tiny probe batch
        first, hidden = model(inputs)
        second, _ = model(inputs.flip(0), hidden)
    return torch.cat([first, second])


def _last_layer_columns(spec: ModelSpec, kept: Mapping[str, Tensor]) -> Tensor:
    """Positions of the kept outputs of a bare stack's last layer in its full-width output."""
    last, layer = len(spec.layers) - 1, spec.layers[-1]
    suffix = ".proj" if layer.proj_size else ""
    names = [f"layer{last}{'.reverse' if d else ''}{suffix}" for d in range(spec.directions)]
    return torch.cat([kept[name] + d * layer.out_size for d, name in enumerate(names)])


def verify_shrink(
    spec: ModelSpec,
    state: dict[str, Tensor],
    small_spec: ModelSpec,
    small_state: Mapping[str, Tensor],
    sets: tuple[GroupSet, ...],
    kept: Mapping[str, Tensor],
) -> tuple[float, float]:
    """Max |shrunk - masked| on a probe batch, and the tolerance; raises ShrinkError above it.

    Masks ``state`` in place (the caller is done with it) so that memory stays near one model.
    """
    dtype = _compute_dtype(state)
    inputs = probe_inputs(spec, dtype=dtype)
    small = {k: v.to(dtype) for k, v in small_state.items()}
    got = _outputs(small_spec, small, inputs)
    masked = mask_state_dict({k: v.to(dtype) for k, v in state.items()}, sets, kept, in_place=True)
    expected = _outputs(spec, masked, inputs)
    if not spec.is_language_model:
        expected = expected[..., _last_layer_columns(spec, kept)]
    diff = float((got - expected).abs().max())
    tolerance = TOLERANCE[dtype] * (1.0 + float(expected.abs().max()))
    if not diff <= tolerance:
        raise ShrinkError(
            f"The shrunk model's outputs differ from the masked model's by {diff:.3g} (tolerance {tolerance:.3g}); "
            "nothing was written.",
            "This is a bug in isscompress; please report it with the checkpoint's layout.",
        )
    return diff, tolerance


def _shrink_checked(checkpoint: Checkpoint, threshold: float):
    """Select, shrink and verify; the checkpoint's state is masked in place afterwards."""
    sets = checkpoint.group_sets
    kept = select_kept(all_unit_norms(checkpoint.state, sets), sets, threshold)
    small_spec = shrunk_spec(checkpoint.spec, kept_counts(kept))
    small_state = shrink_state_dict(checkpoint.state, sets, kept)
    diff, tolerance = verify_shrink(checkpoint.spec, checkpoint.state, small_spec, small_state, sets, kept)
    return small_spec, small_state, sets, kept, diff, tolerance


def shrink(
    source: str | os.PathLike,
    output: str | os.PathLike,
    threshold: float = 0.0,
    *,
    family: str | None = None,
    force: bool = False,
    extra_metadata: Mapping | None = None,
) -> ShrinkResult:
    """Remove units with ISS group norm <= ``threshold`` and write a smaller dense checkpoint."""
    if not threshold >= 0:
        raise ShrinkError(f"The threshold must be 0 or more, not {threshold}.", "Pass a non-negative --threshold.")
    output = check_output_path(output, force=force, inputs=(Path(source),))
    checkpoint = load_checkpoint(source, family)
    with ThreadPoolExecutor(1) as pool:  # hashing releases the GIL: overlap it with the tensor work
        source_hash = pool.submit(sha256_file, checkpoint.path)
        small_spec, small_state, sets, kept, diff, tolerance = _shrink_checked(checkpoint, threshold)
        sha256 = source_hash.result()
    before = checkpoint.summary()
    metadata = {
        **derived_metadata(checkpoint, "shrink", sha256),
        "format_version": FORMAT_VERSION,
        "spec": small_spec.to_dict(),
        "widths_before": {gs.name: gs.size for gs in sets},
        "widths_after": kept_counts(kept),
        "kept": {name: indices.tolist() for name, indices in kept.items()},
        "threshold": threshold,
        "max_abs_diff": diff,
        **(extra_metadata or {}),
    }
    write_checkpoint(output, small_state, metadata)
    after = summarize(small_spec, checkpoint.family, output.stat().st_size, "isscompress", checkpoint.dtype)
    return ShrinkResult(checkpoint.path, output, threshold, before, after,
                        metadata["widths_before"], metadata["widths_after"], diff, tolerance)
