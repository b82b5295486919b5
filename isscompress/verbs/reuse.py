"""Measurements of the original that a report can take from an earlier report instead of measuring again: a user
model's task metrics can take minutes per report, and the original does not change between the reports of its
shrunk versions. Reused only when the earlier report measured these very bytes with this very factory file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import IsscompressError
from ..io.files import sha256_file
from ..io.loading import Checkpoint
from ..json_text import parse_json

MAX_REPORT_BYTES = 64 * 2**20  # a report JSON is kilobytes; this bounds what a wrong file can make us read


def measured_on(original: Checkpoint) -> dict[str, Any]:
    """What the original's measurements depend on: its file's bytes, and the factory file that built and evaluates
    it (None where there is none: a model in memory has no bytes to name)."""
    arch = getattr(original.spec, "arch", None)
    file = Path(arch.rpartition(":")[0]) if arch else None
    return {"original_sha256": original.sha256, "arch": arch,
            "arch_sha256": sha256_file(file) if file is not None and file.is_file() else None}


def reused_metrics(previous: Path, original: Checkpoint) -> dict[str, float]:
    """The original's task metrics as ``previous`` (an earlier ``report --json`` of the same original) measured them."""
    hint = "Give a file that isscompress report --json wrote for this same original and --arch file, or leave it out."
    if getattr(original.spec, "evaluate", None) is None:
        raise IsscompressError(f"--reuse takes the original's task metrics, which an --arch factory's evaluate "
                               f"measures; {original.name} has none to reuse.", "Leave out --reuse.")
    if not previous.is_file() or previous.stat().st_size > MAX_REPORT_BYTES:
        raise IsscompressError(f"--reuse {previous}: not a report file (missing, a folder, or over "
                               f"{MAX_REPORT_BYTES >> 20} MiB).", hint)
    data = parse_json(previous.read_bytes(), f"--reuse {previous}", IsscompressError, hint)
    now = measured_on(original)
    if now["original_sha256"] is None:
        raise IsscompressError(f"--reuse: {original.name} is a model in memory, so no earlier report can be shown "
                               "to have measured it.", "Save it to a file first, or leave --reuse out.")
    then = data.get("measured_on") if isinstance(data, dict) else None
    if then != now:
        what = "is not a report" if not isinstance(then, dict) else (
            "measured another original" if then.get("original_sha256") != now["original_sha256"]
            else "used another --arch file (or the file changed since)")
        raise IsscompressError(f"--reuse {previous} {what}; its measurements do not hold for {original.name}.", hint)
    metrics = data.get("metrics")
    if not isinstance(metrics, dict) or not all(isinstance(pair, list) and pair and isinstance(pair[0], (int, float))
                                                for pair in metrics.values()):
        raise IsscompressError(f"--reuse {previous} holds no task metrics of the original (its factory gave no "
                               "evaluate, or the file was edited).", hint)
    return {str(name): float(pair[0]) for name, pair in metrics.items()}
