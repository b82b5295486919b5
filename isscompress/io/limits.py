"""How many bytes reading one file may produce, decided before anything is inflated or allocated.

A file declares sizes — zip members' uncompressed sizes, HDF5 dataset shapes, ``.npy`` headers, a pickle's array
shapes — and a crafted one declares gigabytes in kilobytes (a "bomb"). Every reader takes each declared size from
one ``ReadBudget`` first, so a bomb is refused by name before its first byte is inflated. The budget is a multiple
of the file's own size (honest weights compress little: floats are nearly random bits) with a floor for small
files; ``ISSCOMPRESS_MAX_READ_MB`` raises it for the rare honest giant (a mostly-zero model saved compressed).
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO

from ..errors import CheckpointError

# What Python's zipfile raises on a damaged or crafted archive (a version it does not know is NotImplementedError)
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError, struct.error)
RATIO = 32  # bytes produced per byte of file
FLOOR = 256 * 2**20  # what any file may produce, however small
ENVIRONMENT = "ISSCOMPRESS_MAX_READ_MB"
COPY_CHUNK = 2**20


def _override() -> int | None:
    value = os.environ.get(ENVIRONMENT, "").strip()
    if not value:
        return None
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes > 0 or megabytes == float("inf"):
        raise CheckpointError(f"{ENVIRONMENT}={value!r} is not a positive number of megabytes.",
                              f"Set it to the most memory, in MB, a checkpoint may need (e.g. {ENVIRONMENT}=8000), "
                              "or unset it.")
    return int(megabytes * 2**20)


class ReadBudget:
    """The bytes a file may still produce; ``take`` before every allocation or inflation."""

    def __init__(self, path: Path, file_bytes: int | None = None) -> None:
        self.path = path
        size = path.stat().st_size if file_bytes is None else file_bytes
        override = _override()
        self.limit = override if override is not None else max(RATIO * size, FLOOR)
        self.overridden = override is not None
        self.left = self.limit

    def take(self, nbytes: int, what: str) -> None:
        """Refuse (before reading) a part of the file that would take the total past the limit."""
        if nbytes < 0 or nbytes > self.left:
            rule = (f"the {ENVIRONMENT} limit" if self.overridden
                    else f"{RATIO}x the file's {self.path.stat().st_size:,} bytes, at least {FLOOR // 2**20} MB")
            raise CheckpointError(
                f"{self.path}: {what} declares {max(nbytes, 0):,} bytes, which would take what this file produces past "
                f"{self.limit:,} bytes ({rule}); nothing was read. A file that small cannot honestly hold that much, "
                "so it is refused as a decompression or allocation bomb.",
                f"If the file is genuine (a mostly-zero model saved compressed), allow more: {ENVIRONMENT}=MEGABYTES "
                "isscompress ...")
        self.left -= nbytes


def copy_bounded(source: IO[bytes], target: IO[bytes], declared: int, budget: ReadBudget, what: str) -> None:
    """Stream ``declared`` bytes from ``source`` (a zip member) to ``target`` in small chunks, never more."""
    budget.take(declared, what)
    left = declared
    while left > 0:
        chunk = source.read(min(COPY_CHUNK, left))
        if not chunk:
            raise CheckpointError(f"{budget.path}: {what} is shorter than it declares ({declared:,} bytes).",
                                  "The file is truncated or damaged; save it again.")
        target.write(chunk)
        left -= len(chunk)
    if source.read(1):
        raise CheckpointError(f"{budget.path}: {what} is longer than it declares ({declared:,} bytes).",
                              "The file is damaged; save it again.")

