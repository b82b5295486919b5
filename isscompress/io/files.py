"""Reading and writing checkpoint files, safely.

Reads safetensors first; ``.pt``/``.pth``/``.bin`` only through ``torch.load(weights_only=True)``;
a whole ``RNNModel`` pickled by pytorch/examples' word_language_model through allow-listed
stand-in classes that only record state (no code from the file runs). Writes are atomic:
a temporary file beside the output, then ``os.replace``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..errors import CheckpointError
from ..outputs import atomic_write, check_output_path
from ..tensors import shared_aliases
from .metadata import Metadata
from .pickled_models import convert_hint, read_pickled_model
from .keras import HDF5_MAGIC
from .keras_weights import read_keras
from .other_formats import check_zip_sizes, read_array_pickle, read_npz, torchscript_refusal, zip_kind

STRIPPED_PREFIXES = ("module.", "_orig_mod.")
NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class RawCheckpoint:
    """Tensors as stored (prefixes stripped), their metadata, and facts read from a pickled module."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, str] = field(default_factory=dict)  # the safetensors header, as stored
    attributes: dict[str, Any] = field(default_factory=dict)  # equations.CELL_KIND: a cell kind a reader found
    ignored: tuple[str, ...] = ()  # what a training checkpoint held beside the weights (optimizer, epoch, ...)

    @cached_property
    def record(self) -> Metadata:
        """The header read as typed metadata (ours, plus the rest verbatim)."""
        return Metadata.from_header(self.metadata, str(self.path))


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:  # file_digest reads into one small reused buffer: no fresh pages to fault in
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _sniff(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(9)
    if not head:
        raise CheckpointError(f"{path} is empty.", "Point to a checkpoint file (.safetensors, .pt, .pth or .bin).")
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    if head[:8] == HDF5_MAGIC[:8]:
        return "hdf5"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < path.stat().st_size:
        return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    raise CheckpointError(
        f"{path} is not a checkpoint isscompress can read (neither safetensors nor a torch.save file).",
        "Give a .safetensors file or a state dict saved with torch.save.",
    )


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path} is a damaged safetensors file ({err}).",
            "It may be truncated or partly written; copy or export it again.",
        ) from None
    return tensors, metadata


def _read_torch(path: Path, legacy: bool = False) -> tuple[Any, dict[str, Any]]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as err:
        if "model.RNNModel" not in str(err) and not legacy:
            raise CheckpointError(f"{path} holds more than tensors and was not loaded.", convert_hint(path)) from None
    except Exception as err:  # a damaged file makes torch.load raise nearly anything
        raise CheckpointError(f"{path} could not be read as a torch.save file ({type(err).__name__}: {err}).",
                              "It may be truncated or damaged; save it again.") from None
    return read_pickled_model(path, legacy)


def _state_dicts(obj: Any, where: str = "", depth: int = 0) -> list[tuple[str, Mapping]]:
    """Every mapping of names to tensors inside ``obj`` (a training checkpoint's dict of dicts), by its key path."""
    if not isinstance(obj, Mapping) or depth > 3:
        return []
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return [(where, obj)]
    return [found for key, value in obj.items() for found in _state_dicts(value, f"{where}.{key}".strip("."), depth + 1)]


def _is_recurrent(state: Mapping) -> bool:
    return any("weight_ih" in str(key) or "weight_hh" in str(key) for key in state)


def _tensor_dict(obj: Any, path: Path) -> tuple[dict[str, Tensor], tuple[str, ...]]:
    """The state dict inside what torch.load returned: a plain one, or the one mapping that holds recurrent
    weights anywhere in a training checkpoint (optimizer state and counters beside it are ignored, and named)."""
    found = _state_dicts(obj)
    recurrent = [(where, state) for where, state in found if _is_recurrent(state)]
    chosen = recurrent if recurrent else [(w, s) for w, s in found if w.split(".")[0] in ("", *NESTED_STATE_KEYS)]
    if len(chosen) == 1:
        where, state = chosen[0]
        ignored = tuple(k for k in obj if k != where.split(".")[0]) if where and isinstance(obj, Mapping) else ()
        return dict(state), tuple(map(str, ignored))
    if len(chosen) > 1:
        raise CheckpointError(f"{path} holds several state dicts with recurrent weights: "
                              f"{', '.join(repr(w) for w, _ in chosen)}.",
                              "Save the one to compress on its own (torch.save(checkpoint[KEY], 'model.pt')).")
    raise CheckpointError(
        f"{path} does not contain a state dict (a mapping of names to tensors).",
        f"Save model.state_dict(), or a dict that holds it under one of {list(NESTED_STATE_KEYS)}.",
    )


def strip_prefixes(tensors: Mapping[str, Tensor], path: Path | str = "the checkpoint") -> dict[str, Tensor]:
    """Drop DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` prefixes; two keys that become one name
    (``module.X`` beside ``X``) are ambiguous, and refused rather than one of them kept."""
    stripped: dict[str, Tensor] = {}
    original: dict[str, str] = {}
    for key, value in tensors.items():
        name = key
        while name.startswith(STRIPPED_PREFIXES):
            name = name.split(".", 1)[1]
        if name in stripped:
            raise CheckpointError(f"{path} holds both '{original[name]}' and '{key}', which are the same weight "
                                  f"'{name}' once the wrapper prefixes {list(STRIPPED_PREFIXES)} are removed.",
                                  "Save the state dict of one model (model.module.state_dict() for a wrapped one).")
        stripped[name], original[name] = value, key
    return stripped


def _all_finite(value: Tensor) -> bool:
    """NaN and Inf propagate through a sum, so a finite sum proves every element finite in one fast pass
    (a third of aminmax's time on a large file); only a sum that overflows needs the element-wise test."""
    accumulate = torch.float64 if value.dtype == torch.float64 else torch.float32
    return bool(torch.isfinite(value.sum(dtype=accumulate))) or bool(torch.isfinite(value).all())


def _is_batchnorm_counter(key: str, value: Tensor) -> bool:
    """A BatchNorm's ``num_batches_tracked``: one non-negative int64, part of every state dict that holds one."""
    return (key.rpartition(".")[2] == "num_batches_tracked" and value.dtype == torch.int64 and value.dim() == 0
            and int(value) >= 0)


def _check_values(tensors: Mapping[str, Tensor], path: Path) -> None:
    for key, value in tensors.items():
        if _is_batchnorm_counter(key, value):
            continue
        if value.dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{path}: tensor '{key}' has dtype {value.dtype}; model weights must be floating point.",
                "Remove non-weight tensors (step counters, optimizer state) from the file.",
            )
        if value.numel() and not _all_finite(value):
            raise CheckpointError(f"{path}: tensor '{key}' contains NaN or Inf values.",
                                  "The model diverged; use an earlier checkpoint.")


def read_checkpoint(path: str | os.PathLike) -> RawCheckpoint:
    """Read the tensors of a checkpoint file, refusing anything unsafe or damaged."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.", "Check the path.")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file.", "Point to a checkpoint file.")
    kind = _sniff(path)
    metadata: dict[str, str] = {}
    attributes: dict[str, Any] = {}
    ignored: tuple[str, ...] = ()
    if kind == "torch-zip":
        kind = zip_kind(path)
    arrays = read_array_pickle(path) if kind == "torch-legacy" else None
    if kind == "safetensors":
        tensors, metadata = _read_safetensors(path)
    elif kind == "npz":
        tensors = read_npz(path)
    elif kind == "torchscript":
        raise torchscript_refusal(path)
    elif kind in ("hdf5", "keras-zip"):
        tensors, attributes = read_keras(path, kind)
    elif arrays is not None:
        tensors = arrays
    else:
        if kind == "torch-zip":
            check_zip_sizes(path)
        obj, attributes = _read_torch(path, legacy=kind == "torch-legacy")
        tensors, ignored = _tensor_dict(obj, path)
    if not tensors:
        raise CheckpointError(f"{path} contains no tensors.", "Point to a trained model's checkpoint.")
    tensors = strip_prefixes(tensors, path)
    _check_values(tensors, path)
    return RawCheckpoint(path, tensors, metadata, attributes, ignored)


CHECKPOINT_SUFFIXES = (".safetensors",)  # what write_checkpoint writes


def check_checkpoint_output(output: str | os.PathLike, *, force: bool, inputs: tuple[Path, ...] = (),
                            suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> Path:
    """:func:`check_output_path` for a checkpoint isscompress writes (safetensors, or what ``suffixes`` name)."""
    return check_output_path(output, force=force, inputs=inputs, suffixes=suffixes)


def write_checkpoint(output: Path, tensors: Mapping[str, Tensor], metadata: Metadata) -> None:
    """Save tensors as safetensors with the metadata in the header, atomically."""
    payload = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    for alias in shared_aliases(payload.items()):  # a tied weight under two names: safetensors stores each its own copy
        payload[alias] = payload[alias].clone()
    header = metadata.to_header()
    atomic_write(output, lambda temporary: save_file(payload, str(temporary), metadata=header))
