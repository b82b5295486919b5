"""``shrink``: remove every unit whose ISS group norm is at most a threshold, checked exact.

The verb works on a checkpoint in memory and returns the smaller one; given an output path it
also writes it (atomically, after the check). Nothing is written when the check fails.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from torch import Tensor

from ..core.architecture import Architecture
from ..core.groups import all_unit_norms
from ..core.surgery import mask_state_dict, shrink_state_dict
from ..core.thresholding import kept_counts, select_kept
from ..errors import ShrinkError
from ..io.files import check_checkpoint_output, sha256_file
from ..io.loading import Checkpoint, as_checkpoint, save_checkpoint, source_files
from ..measure.kernels import rnn_kernel
from ..measure.summary import ModelSummary, summarize_checkpoint
from .preparation import vocabulary_of

TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-5}


@dataclass(frozen=True)
class ShrinkResult:
    checkpoint: Checkpoint  # the shrunk model (``path`` set when it was written)
    source: Path | None
    output: Path | None
    threshold: float
    before: ModelSummary
    after: ModelSummary
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    max_abs_diff: float  # shrunk against the masked model (removed units zeroed): the surgery's exactness
    tolerance: float
    largest_removed_norm: float = 0.0  # 0: every removed unit was already zero, so masked == original
    original_max_abs_diff: float = 0.0  # shrunk against the original model, on the same probe
    output_scale: float = 0.0  # the largest |output| of the original on the probe, to judge the difference by

    @property
    def changes_the_function(self) -> bool:
        """Whether units that were not zero were removed (the shrunk model is not the original)."""
        return self.largest_removed_norm > 0

    def to_dict(self) -> dict:
        return {
            "source": str(self.source), "output": str(self.output), "threshold": self.threshold,
            "before": self.before.to_dict(), "after": self.after.to_dict(),
            "widths_before": self.widths_before, "widths_after": self.widths_after,
            "max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
            "largest_removed_norm": self.largest_removed_norm, "original_max_abs_diff": self.original_max_abs_diff,
            "output_scale": self.output_scale,
        }


def _compute_dtype(state: Mapping[str, Tensor]) -> torch.dtype:
    dtype = next(iter(state.values())).dtype
    return dtype if dtype in TOLERANCE else torch.float32


def _outputs(spec: Architecture, state: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
    model = spec.build(state)
    with torch.inference_mode(), rnn_kernel("native"):  # oneDNN is slow for a tiny probe batch
        first, hidden = model(inputs)
        second, _ = model(inputs.flip(0), hidden)
    return torch.cat([first, second])


def verify_shrink(
    spec: Architecture,
    state: dict[str, Tensor],
    small_spec: Architecture,
    small_state: Mapping[str, Tensor],
    kept: Mapping[str, Tensor],
    *,
    in_place: bool = False,
    norms: Mapping[str, Tensor] | None = None,
    against_original: bool = False,
) -> tuple[float, float, float, float]:
    """Max |shrunk - masked| on a probe batch, and the tolerance; raises ShrinkError above it. Also
    max |shrunk - original| (with ``against_original``; else the same as against the masked model, which is then
    the original) and the original's largest |output|, to judge it by.

    With ``in_place`` the caller's ``state`` is masked in place (memory stays near one model). With the
    units' ``norms``, dropped units whose groups are already exactly zero (what ISS's proximal step leaves)
    are not masked again: the masked model is the same, without a pass over the tensors.
    """
    dtype = _compute_dtype(state)
    # Two steps in each of two calls: the recurrence within a call and the state carried between calls are both
    # checked, and the dense model's weights are read only four times (the check's whole cost on a large model).
    inputs = spec.probe_inputs(steps=2, batch=1, dtype=dtype)
    small = {k: v.to(dtype) for k, v in small_state.items()}
    got = _outputs(small_spec, small, inputs)
    converted = {k: v.to(dtype) for k, v in state.items()}
    columns = spec.kept_outputs(kept)
    original = _outputs(spec, converted, inputs) if against_original else None  # before any masking in place
    to_zero = kept if norms is None else {  # "kept" for masking: the kept units and the already-zero ones
        name: torch.cat([indices.cpu(), (norms[name] == 0).nonzero().squeeze(1)]).unique() for name, indices in kept.items()}
    masked = mask_state_dict(converted, spec.group_sets(), to_zero, in_place=in_place)
    expected = _outputs(spec, masked, inputs)
    if columns is not None:
        expected = expected[..., columns]
        original = original[..., columns] if original is not None else None
    diff = float((got - expected).abs().max())
    reference = original if original is not None else expected
    gap, scale = float((got - reference).abs().max()), float(reference.abs().max())
    tolerance = TOLERANCE[dtype] * (1.0 + float(expected.abs().max()))
    if not diff <= tolerance:
        raise ShrinkError(
            f"The shrunk model's outputs differ from the masked model's by {diff:.3g} (tolerance {tolerance:.3g}); "
            "nothing was written.",
            "This is a bug in isscompress; please report it with the checkpoint's layout.",
        )
    return diff, tolerance, gap, scale


@contextmanager
def _one_core_spared() -> Iterator[None]:
    """torch's intra-op threads leave one core to the hashing thread. Oversubscribed, their barriers stall
    every short op: on 2 cores the group norms took several times longer beside the hash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_threshold(threshold: float) -> None:
    if not threshold >= 0:
        raise ShrinkError(f"The threshold must be 0 or more, not {threshold}.", "Pass a non-negative --threshold.")


def shrink_checkpoint(
    checkpoint: Checkpoint,
    threshold: float = 0.0,
    *,
    in_place: bool = False,
    source_sha256: Callable[[], str | None] | None = None,
) -> ShrinkResult:
    """The smaller, checked checkpoint in memory.

    ``in_place`` lets the check mask ``checkpoint``'s tensors in place (for a caller that is done
    with them), so memory stays near one model. ``source_sha256`` is asked for the source's hash
    only once the work is done (a caller may be computing it meanwhile)."""
    _check_threshold(threshold)
    sets = checkpoint.group_sets
    norms = all_unit_norms(checkpoint.state, sets)
    kept = select_kept(norms, sets, threshold)
    widths_before, widths_after = {gs.name: gs.size for gs in sets}, kept_counts(kept)
    small_spec = checkpoint.spec.with_kept(widths_after)
    small_state = shrink_state_dict(checkpoint.state, sets, kept)
    before = summarize_checkpoint(checkpoint)
    removed = _largest_removed(norms, kept)
    diff, tolerance, gap, scale = verify_shrink(checkpoint.spec, checkpoint.state, small_spec, small_state, kept,
                                                in_place=in_place, norms=norms, against_original=removed > 0)
    sha256 = (source_sha256 or (lambda: checkpoint.sha256))()
    metadata = replace(
        checkpoint.metadata.derived("shrink", checkpoint.name, sha256, checkpoint.family),
        architecture=small_spec.kind, spec=small_spec.to_dict(), widths_before=widths_before,
        widths_after=widths_after, kept={name: indices.tolist() for name, indices in kept.items()},
        threshold=threshold, max_abs_diff=diff, vocabulary=vocabulary_of(checkpoint))
    small = Checkpoint(small_spec, small_state, checkpoint.family, "isscompress", metadata)
    return ShrinkResult(small, checkpoint.path, None, threshold, before, summarize_checkpoint(small),
                        widths_before, widths_after, diff, tolerance, removed, gap, scale)


def _largest_removed(norms: Mapping[str, Tensor], kept: Mapping[str, Tensor]) -> float:
    """The largest group norm among the units a shrink removes (0: they were all exactly zero)."""
    largest = 0.0
    for name, norm in norms.items():
        removed = torch.ones_like(norm, dtype=torch.bool)
        removed[kept[name].to(norm.device)] = False
        if bool(removed.any()):
            largest = max(largest, float(norm[removed].max()))
    return largest


def shrink(
    source: Checkpoint | str | os.PathLike,
    output: str | os.PathLike | None = None,
    threshold: float = 0.0,
    *,
    family: str | None = None,
    force: bool = False,
) -> ShrinkResult:
    """Remove units with ISS group norm <= ``threshold``; with ``output``, write the smaller checkpoint."""
    _check_threshold(threshold)
    in_memory = isinstance(source, Checkpoint)
    if output is not None:
        output = check_checkpoint_output(output, force=force, inputs=source_files(source))
    # Hashing releases the GIL: it reads the file beside loading and surgery, on a core of its own.
    with ThreadPoolExecutor(1) as pool, _one_core_spared():
        if in_memory:
            checkpoint = source
            source_hash = pool.submit(lambda: checkpoint.sha256)
        else:
            source_hash = pool.submit(sha256_file, Path(source))
            checkpoint = as_checkpoint(source, family)
        # A checkpoint loaded here is ours to mask in place; a caller's stays untouched.
        result = shrink_checkpoint(checkpoint, threshold, in_place=not in_memory, source_sha256=source_hash.result)
    if output is None:
        return result
    small = save_checkpoint(result.checkpoint, output)
    return replace(result, checkpoint=small, output=output, after=replace(result.after, file_bytes=small.file_bytes))
