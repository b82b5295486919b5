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

from ..core.exactness import check_shrunk
from ..core.groups import WIDTHS, all_unit_norms
from ..core.surgery import shrink_state_dict
from ..core.thresholding import kept_counts, select_kept
from ..errors import ShrinkError
from ..io.files import check_checkpoint_output, sha256_file
from ..io.loading import output_suffixes, Checkpoint, as_checkpoint, save_checkpoint, source_files
from ..measure.summary import ModelSummary, summarize_checkpoint
from .preparation import vocabulary_of

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
    checked: bool = True  # False: nothing could run the model (a user model known only by its groups file)

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
            "output_scale": self.output_scale, "checked": self.checked,
        }



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


def _check_widths(widths: str) -> str:
    if widths not in WIDTHS:
        raise ShrinkError(f"Unknown widths choice {widths!r}.", f"Use one of: {', '.join(WIDTHS)}.")
    return widths


def shrink_checkpoint(
    checkpoint: Checkpoint,
    threshold: float = 0.0,
    *,
    in_place: bool = False,
    source_sha256: Callable[[], str | None] | None = None,
    widths: str = "all",
) -> ShrinkResult:
    """The smaller, checked checkpoint in memory.

    ``widths="recurrent"`` narrows only the recurrent layers (every embedding dimension and MLP unit kept).
    ``in_place`` lets the check mask ``checkpoint``'s tensors in place (for a caller that is done
    with them), so memory stays near one model. ``source_sha256`` is asked for the source's hash
    only once the work is done (a caller may be computing it meanwhile)."""
    _check_threshold(threshold)
    sets = checkpoint.group_sets
    norms = all_unit_norms(checkpoint.state, sets)
    kept = select_kept(norms, sets, threshold, _check_widths(widths))
    widths_before, widths_after = {gs.name: gs.size for gs in sets}, kept_counts(kept)
    small_spec = checkpoint.spec.with_kept(kept)
    small_state = shrink_state_dict(checkpoint.state, sets, kept)
    before = summarize_checkpoint(checkpoint)
    removed = _largest_removed(norms, kept)
    exact = check_shrunk(checkpoint.spec, checkpoint.state, small_spec, small_state, kept,
                         in_place=in_place, norms=norms, against_original=removed > 0)
    sha256 = (source_sha256 or (lambda: checkpoint.sha256))()
    metadata = replace(
        checkpoint.metadata.derived("shrink", checkpoint.name, sha256, checkpoint.family),
        architecture=small_spec.kind, spec=small_spec.to_dict(), widths_before=widths_before,
        widths_after=widths_after, kept={name: indices.tolist() for name, indices in kept.items()},
        threshold=threshold, max_abs_diff=exact.max_abs_diff, vocabulary=vocabulary_of(checkpoint))
    small = Checkpoint(small_spec, small_state, checkpoint.family, "isscompress", metadata)
    return ShrinkResult(small, checkpoint.path, None, threshold, before, summarize_checkpoint(small),
                        widths_before, widths_after, exact.max_abs_diff, exact.tolerance, removed,
                        exact.original_max_abs_diff, exact.output_scale, exact.checked)


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
    arch: str | None = None,
    groups: str | os.PathLike | None = None,
    widths: str = "all",
) -> ShrinkResult:
    """Remove units with ISS group norm <= ``threshold``; with ``output``, write the smaller checkpoint. ``arch``
    (FILE.py:FACTORY) or ``groups`` (a YAML groups file) open a checkpoint of a user's own model. ``widths``:
    ``"all"`` narrows every width that has groups, ``"recurrent"`` only the recurrent layers."""
    _check_widths(widths)
    _check_threshold(threshold)
    in_memory = isinstance(source, Checkpoint)
    if output is not None:
        output = check_checkpoint_output(output, force=force, inputs=source_files(source),
                                         suffixes=output_suffixes(source))
    # Hashing releases the GIL: it reads the file beside loading and surgery, on a core of its own.
    with ThreadPoolExecutor(1) as pool, _one_core_spared():
        if in_memory:
            checkpoint = source
            source_hash = pool.submit(lambda: checkpoint.sha256)
        else:
            source_hash = pool.submit(sha256_file, Path(source))
            checkpoint = as_checkpoint(source, family, arch, groups)
        # A checkpoint loaded here is ours to mask in place; a caller's stays untouched.
        result = shrink_checkpoint(checkpoint, threshold, in_place=not in_memory, source_sha256=source_hash.result,
                                    widths=widths)
    if output is None:
        return result
    small = save_checkpoint(result.checkpoint, output)
    return replace(result, checkpoint=small, output=output, after=replace(result.after, file_bytes=small.file_bytes))
