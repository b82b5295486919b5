"""A folder of the user's own for derived files (a corpus cut into train/valid/test), never a shared one.

A fixed name under the system temp folder is everyone's: another user can create it first and fill it, and what
is written there is readable by all. The cache lives under ``$XDG_CACHE_HOME/isscompress`` (``~/.cache`` by
default); every folder on the way that isscompress creates is made 0700, and the folder used must belong to the
user and be writable by no one else — otherwise it is refused, never used as found.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import DataError


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache") / "isscompress"


def _check_owned(folder: Path) -> None:
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise DataError(f"The cache folder {folder} is not a folder (a file or a link).",
                        "Remove it; isscompress creates it again as a private folder.")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise DataError(f"The cache folder {folder} belongs to another user, so its files cannot be trusted.",
                        "Remove it, or set XDG_CACHE_HOME to a folder of your own.")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise DataError(f"The cache folder {folder} can be written by other users, so its files cannot be trusted.",
                        f"Make it private (chmod 700 {folder}), or remove it.")


def private_folder(*parts: str) -> Path:
    """``cache_root()/parts...``, created 0700 where missing and checked to be the user's alone."""
    folder = cache_root()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_owned(folder)
        for part in parts:
            folder = folder / part
            folder.mkdir(mode=0o700, exist_ok=True)
            _check_owned(folder)
    except OSError as err:
        raise DataError(f"Cannot create the cache folder {folder}: {err.strerror or err}.",
                        "Set XDG_CACHE_HOME to a folder you can write to.") from None
    return folder


def write_private(folder: Path, name: str, text: str) -> Path:
    """Write ``folder/name`` atomically through a file of an unpredictable name, readable by the user alone."""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", dir=folder)  # mkstemp: 0600, O_EXCL, random name
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, folder / name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return folder / name
