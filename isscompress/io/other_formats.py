"""Files that are not safetensors or torch.save state dicts, told apart so that each is read or named.

A NumPy ``.npz`` and a pickle of a dict of NumPy arrays are read (arrays only: the pickle reader
rebuilds NumPy arrays and nothing else); a TorchScript archive carries code with its weights and is
refused with the steps to convert it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .keras import is_keras_zip

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # what torch.save's pre-zip format pickles first


def zip_kind(path: Path) -> str:
    """``keras-zip``, ``npz``, ``torchscript`` or ``torch-zip`` (torch.save's own format) for a zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "torch-zip"  # torch.load says what is wrong with it
    if is_keras_zip(names):
        return "keras-zip"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
        return "torchscript"
    return "torch-zip"


def read_npz(path: Path) -> dict[str, Tensor]:
    import numpy  # a dependency of ours (safetensors needs it)

    with numpy.load(path, allow_pickle=False) as archive:
        return {name: torch.from_numpy(archive[name].copy()) for name in archive.files}


def torchscript_refusal(path: Path) -> CheckpointError:
    """Why a TorchScript archive is not read, and how to turn it into a state dict."""
    target = path.with_suffix(".state_dict.pt")
    return CheckpointError(
        f"{path} is a TorchScript archive (torch.jit.save): its weights come with compiled code, which isscompress "
        "does not load.",
        "If you trust it, save its weights as a state dict: python -c \"import torch; "
        f"torch.save(torch.jit.load('{path.resolve()}', map_location='cpu').state_dict(), '{target.resolve()}')\" "
        f"and run isscompress on {target.name}.")


class _ArraysOnly(pickle.Unpickler):
    """Rebuilds NumPy arrays (and the dicts holding them); any other class in the pickle is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_array_pickle(path: Path) -> dict[str, Tensor] | None:
    """The arrays of a pickled dict of NumPy arrays; None when the pickle is torch.save's legacy format.

    Raises CheckpointError for a pickle that holds anything else."""
    import numpy

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
    if isinstance(obj, dict) and obj and all(isinstance(v, numpy.ndarray) for v in obj.values()):
        return {str(name): torch.from_numpy(numpy.array(value)) for name, value in obj.items()}
    raise CheckpointError(f"{path} is a pickle of {type(obj).__name__}, not a dict of weight arrays.",
                          "Save the model's state dict with torch.save or safetensors.")
