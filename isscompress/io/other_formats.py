"""Files that are not safetensors or torch.save state dicts, told apart so that each is read or named.

A NumPy ``.npz`` and a pickle of a dict of NumPy arrays are read (arrays only: the pickle reader
rebuilds NumPy arrays and nothing else); a TorchScript archive carries code with its weights and is
refused with the steps to convert it.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy  # a dependency of ours (safetensors needs it)
import torch
from torch import Tensor

from ..errors import CheckpointError
from .keras import is_keras_zip
from .limits import ZIP_ERRORS, ReadBudget

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # what torch.save's pre-zip format pickles first


def zip_kind(path: Path) -> str:
    """``keras-zip``, ``npz``, ``torchscript`` or ``torch-zip`` (torch.save's own format) for a zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except ZIP_ERRORS:
        return "torch-zip"  # torch.load says what is wrong with it
    if is_keras_zip(names):
        return "keras-zip"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    return "torch-zip"


def check_zip_sizes(path: Path) -> None:
    """torch.save's zip holds its storages uncompressed, but a crafted one may deflate them: take every member's
    declared size from the read budget before torch inflates anything."""
    budget = ReadBudget(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except ZIP_ERRORS:
        return  # not a readable zip: torch.load says what is wrong with it
    for info in infos:
        budget.take(info.file_size, f"member {info.filename}")


def _array_from_bytes(data: bytes, shape: tuple, dtype: numpy.dtype, fortran: bool, what: str, path: Path) -> Tensor:
    """A tensor from an array's raw bytes, after checking that they are exactly what its header declares."""
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "fiub":
        raise CheckpointError(f"{path}: {what} has dtype {dtype} (objects, text or records), not numbers.",
                              "Save only the model's weight arrays (numpy.savez with float arrays).")
    count = math.prod(shape)
    if len(data) != count * dtype.itemsize:
        raise CheckpointError(f"{path}: {what} declares shape {tuple(shape)} of {dtype} ({count * dtype.itemsize:,} "
                              f"bytes) but holds {len(data):,} bytes.", "The file is truncated or damaged; save it again.")
    array = numpy.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return torch.from_numpy(numpy.array(array, dtype=dtype.newbyteorder("="), order="C"))


HEADER_READERS = {(1, 0): numpy.lib.format.read_array_header_1_0, (2, 0): numpy.lib.format.read_array_header_2_0}


def _npy_header(handle: Any, member: str, path: Path) -> tuple[tuple, bool, numpy.dtype]:
    """(shape, Fortran order, dtype) of a ``.npy`` member; numpy parses the header text as a Python literal,
    which fails in many ways on a damaged one (SyntaxError, TokenError, ValueError, ...): each is named."""
    try:
        version = numpy.lib.format.read_magic(handle)
        if version not in HEADER_READERS:
            raise ValueError(f"unknown .npy format version {version}")
        return HEADER_READERS[version](handle)
    except Exception as err:  # numpy's literal parser raises nearly anything on damaged text
        raise CheckpointError(f"{path}: the header of member {member} is damaged ({type(err).__name__}: "
                              f"{str(err)[:120]}).", "Save the arrays again with numpy.savez.") from None


def read_npz(path: Path) -> dict[str, Tensor]:
    """Every ``.npy`` member, its header checked against its size and the read budget before it is inflated."""
    budget = ReadBudget(path)
    tensors: dict[str, Tensor] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename[:-len(".npy")]
                if name in tensors:
                    raise CheckpointError(f"{path} holds the array '{name}' twice.", "Save each array once.")
                budget.take(info.file_size, f"member {info.filename}")
                with archive.open(info) as handle:
                    shape, fortran, dtype = _npy_header(handle, info.filename, path)
                    tensors[name] = _array_from_bytes(handle.read(info.file_size), shape, dtype, fortran,
                                                      f"array '{name}'", path)
    except CheckpointError:
        raise
    except (*ZIP_ERRORS, TypeError) as err:
        raise CheckpointError(f"{path} is a damaged NumPy .npz file ({type(err).__name__}: {str(err)[:160]}).",
                              "It may be truncated or damaged; save it again with numpy.savez.") from None
    return tensors


def torchscript_refusal(path: Path) -> CheckpointError:
    """Why a TorchScript archive is not read, and how to turn it into a state dict."""
    target = path.with_suffix(".state_dict.pt")
    return CheckpointError(
        f"{path} is a TorchScript archive (torch.jit.save): its weights come with compiled code, which isscompress "
        "does not load.",
        "If you trust it, save its weights as a state dict: python -c \"import torch; "
        f"torch.save(torch.jit.load('{path.resolve()}', map_location='cpu').state_dict(), '{target.resolve()}')\" "
        f"and run isscompress on {target.name}.")


class _PendingArray:
    """What the pickle's ``_reconstruct`` makes: nothing is allocated until its state (the file's own bytes)
    arrives, so an array without data cannot become uninitialised memory."""

    state: tuple | None = None

    def __setstate__(self, state: tuple) -> None:
        self.state = state


def _pending_from_buffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> _PendingArray:
    pending = _PendingArray()
    raw = buffer.raw() if isinstance(buffer, pickle.PickleBuffer) else buffer
    pending.state = (1, shape, dtype, order == "F", bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview))
                     else None)
    return pending


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds NumPy arrays (and the dicts holding them) as pending arrays; any other class is refused."""

    ALLOWED = {("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("collections", "OrderedDict"), ("_codecs", "encode")}
    RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
    FROM_BUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}  # protocol 5

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.RECONSTRUCT:
            return lambda cls, shape, dtype: _PendingArray()
        if (module, name) in self.FROM_BUFFER:
            return _pending_from_buffer
        if (module, name) == ("numpy", "ndarray"):
            return _PendingArray  # only ever the first argument of _reconstruct
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def _from_pending(pending: Any, name: str, path: Path, budget: ReadBudget) -> Tensor:
    what = f"array '{name}'"
    state = pending.state if isinstance(pending, _PendingArray) else None
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], numpy.dtype)):
        raise CheckpointError(f"{path}: {what} is rebuilt without its data (or with state isscompress does not know).",
                              "Save the arrays again with pickle or numpy.savez from real arrays.")
    _, shape, dtype, fortran, data = state
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise CheckpointError(f"{path}: {what} has the shape {str(shape)[:40]}.", "The file is damaged; save it again.")
    budget.take(math.prod(shape) * dtype.itemsize, what)
    if isinstance(data, str):  # protocol 2 stores bytes as latin-1 text
        data = data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError(f"{path}: {what} has no raw data.", "Save the arrays again from real arrays.")
    return _array_from_bytes(bytes(data), shape, dtype, bool(fortran), what, path)


def read_array_pickle(path: Path) -> dict[str, Tensor] | None:
    """The arrays of a pickled dict of NumPy arrays; None when the pickle is torch.save's legacy format.

    Raises CheckpointError for a pickle that holds anything else."""
    try:
        with open(path, "rb") as handle:
            obj = _ArraysOnly(handle).load()
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} is a pickle holding Python objects ({err}), not a state dict.",
                              "Save the model's state dict with torch.save or safetensors.") from None
    except Exception as err:  # a damaged pickle raises nearly anything
        raise CheckpointError(f"{path} could not be read ({type(err).__name__}: {err}).",
                              "It may be truncated or damaged; save it again.") from None
    if obj == TORCH_LEGACY_MAGIC:
        return None
    if isinstance(obj, dict) and obj and all(isinstance(v, _PendingArray) for v in obj.values()):
        budget = ReadBudget(path)
        return {str(name): _from_pending(value, str(name), path, budget) for name, value in obj.items()}
    raise CheckpointError(f"{path} is a pickle of {type(obj).__name__}, not a dict of weight arrays.",
                          "Save the model's state dict with torch.save or safetensors.")
