"""Where isscompress writes: atomically (a temporary file beside the output, then ``os.replace``), never over an
input, never through a link, never a partial line in a log. Every layer that writes a file uses these."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError

from .errors import CheckpointError


def check_output_path(output: str | os.PathLike, *, force: bool, inputs: tuple[Path, ...] = (),
                      suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse to overwrite an input or (without ``force``) an existing file; the folder must exist. With
    ``suffixes``, the name must end in one of them: the name of a file says what it is to every other tool."""
    output = Path(output)
    if suffixes and output.suffix.lower() not in suffixes:
        corrected = output.with_suffix(suffixes[0]) if output.suffix else output.with_name(output.name + suffixes[0])
        raise CheckpointError(f"The output {output} would hold {suffixes[0]} data under a '{output.suffix}' name, which "
                              "other tools would read as another format (torch.load fails on safetensors bytes).",
                              f"Name it {corrected.name}.")
    if any(output.resolve() == Path(source).resolve() for source in inputs):
        raise CheckpointError(f"The output {output} is the input file.", "Write to a new file.")
    if output.is_dir():
        raise CheckpointError(f"The output {output} is a folder.", "Give a file name inside it.")
    if output.exists() and not force:
        raise CheckpointError(f"{output} already exists.", "Choose another output, or pass --force to overwrite it.")
    if not output.parent.is_dir():
        raise CheckpointError(f"The folder {output.parent} does not exist.", "Create it first, or choose another output.")
    if not os.access(output.parent, os.W_OK):
        raise CheckpointError(f"The folder {output.parent} is not writable.", "Choose another output folder.")
    return output


def atomic_write(output: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(temporary_path)`` beside ``output``, then move it into place; never leave a partial file."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as err:
        raise CheckpointError(f"Could not write {output}: {err.strerror or err}.",
                              "Check that the folder is writable; nothing was written.") from None
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, output)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as SafetensorError
        Path(temporary).unlink(missing_ok=True)
        raise CheckpointError(f"Could not write {output}: {getattr(err, 'strerror', None) or err}.",
                              "Check free disk space and permissions; the previous file, if any, is unchanged.") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def refuse_link(path: Path) -> None:
    """A side file isscompress appends to must be its own: a symbolic link there would send the writes elsewhere."""
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link; isscompress writes its logs only into its own files, never "
                              "through a link (which could point at anyone's file).", f"Remove {path}, then rerun.")


def append_line(path: Path, line: str) -> None:
    """Append one line to a log, whole or not at all: a full disk mid-line leaves the log as it was. The log is
    opened without following a symbolic link."""
    data = (line + "\n").encode("utf-8")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT  # never through a link; a pipe fails instead of blocking
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    refuse_link(path)
    try:
        descriptor = os.open(path, flags, 0o644)
    except OSError as err:
        if path.is_symlink():
            refuse_link(path)
        raise CheckpointError(f"Could not open the log {path}: {err.strerror or err}.",
                              "Check that it is a file in a writable folder (not a folder or a link).") from None
    with open(descriptor, "ab", buffering=0) as log:  # unbuffered: nothing is left to fail when the file closes
        if stat.S_ISFIFO(os.fstat(descriptor).st_mode) or stat.S_ISSOCK(os.fstat(descriptor).st_mode):
            raise CheckpointError(f"The log {path} is a pipe or socket, not a file.", f"Remove {path}, then rerun.")
        start = log.tell()
        try:
            if log.write(data) != len(data):
                raise OSError(28, "No space left on device")  # a short write is how a filling disk ends
        except OSError as err:
            try:
                log.truncate(start)
            except OSError:
                pass
            raise CheckpointError(f"Could not write the log {path}: {err.strerror or err}.",
                                  "Free disk space; the log holds every complete line up to this one.") from None
