"""Whole models pickled by pytorch/examples' word_language_model (``torch.save(model, f)``), read without
running code from the file.

Every class the pickle names resolves through an allow-list: the ``nn.Module`` classes such a model holds
become stand-ins that only record their state, tensors are rebuilt by torch's own functions, and any other
class is refused. The zip format goes through ``torch.load(weights_only=True)`` with the stand-ins as safe
globals; the legacy (pre-1.6) format pickles each module's source beside it, which a weights-only load
refuses, so it is read by torch's legacy loader with an unpickler restricted to the same allow-list.
"""

from __future__ import annotations

import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError


class _ModuleRecord:
    """Stand-in for an allow-listed ``nn.Module`` class in a pickle: it only records the state."""

    dump_patches = False  # what torch's legacy loader asks of a module class (it only warns about source)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


# Classes a pytorch/examples word_language_model pickle contains. Each is replaced by
# _ModuleRecord, so unpickling never runs their code.
PICKLED_MODULE_CLASSES = (
    "model.RNNModel",
    "torch.nn.modules.rnn.LSTM",
    "torch.nn.modules.rnn.GRU",
    "torch.nn.modules.rnn.RNN",
    "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.dropout.Dropout",
)


def _module_parameters(record: _ModuleRecord, prefix: str = "") -> dict[str, Tensor]:
    found: dict[str, Tensor] = {}
    for name, value in (getattr(record, "_parameters", None) or {}).items():
        if isinstance(value, Tensor):
            found[prefix + name] = value
    for name, child in (getattr(record, "_modules", None) or {}).items():
        if isinstance(child, _ModuleRecord):
            for key, value in _module_parameters(child, f"{prefix}{name}.").items():
                if key in found:  # a parameter named "rnn.weight_ih_l0" beside module rnn's own: which one is it?
                    raise CheckpointError(f"The pickled model names two parameters '{key}'.",
                                          "Save model.state_dict() instead, and read that.")
                found[key] = value
    return found


# What else a legacy pickle of such a model names: tensor and parameter rebuilding, and plain containers.
LEGACY_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                  ("collections", "OrderedDict"), ("copyreg", "_reconstructor"), ("builtins", "object"),
                  ("torch", "Size"), ("builtins", "set"), ("__builtin__", "set")}


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if f"{module}.{name}" in PICKLED_MODULE_CLASSES:
            return _ModuleRecord
        if (module, name) in LEGACY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not in the allow-list")


_ALLOW_LIST_PICKLE = types.ModuleType("isscompress_allow_list_pickle")
_ALLOW_LIST_PICKLE.Unpickler = _AllowListUnpickler
_ALLOW_LIST_PICKLE.load = lambda handle, **kwargs: _AllowListUnpickler(handle, **kwargs).load()


def convert_hint(path: Path) -> str:
    target = path.with_suffix(".state_dict.pt")
    return (
        "It holds pickled Python objects, and isscompress does not run code from a checkpoint. "
        "If you trust the file, convert it to a state dict with these two lines:\n"
        "  cd DIRECTORY_OF_THE_CODE_THAT_SAVED_IT\n"
        f"  python -c \"import torch; torch.save(torch.load('{path.resolve()}', weights_only=False).state_dict(), "
        f"'{target.resolve()}')\"\n"
        f"then run isscompress on {target.name}."
    )


def _load_record(path: Path, legacy: bool) -> Any:
    if not legacy:
        with torch.serialization.safe_globals([(_ModuleRecord, name) for name in PICKLED_MODULE_CLASSES]):
            return torch.load(path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():  # "source code of class ... has changed": the stand-in is not the class
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_ALLOW_LIST_PICKLE)


def read_pickled_model(path: Path, legacy: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The parameters of a pickled RNNModel (names as its state_dict has them) and its plain attributes."""
    try:
        record = _load_record(path, legacy)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} is a pickled model with classes outside the allow-list ({err}).",
                              convert_hint(path)) from None
    except Exception as err:
        raise CheckpointError(f"{path} could not be read as a torch.save file ({type(err).__name__}: {err}).",
                              "It may be truncated or damaged; save it again.") from None
    if not isinstance(record, _ModuleRecord):
        raise CheckpointError(f"{path} does not hold a model or a state dict.", convert_hint(path))
    attributes = {k: v for k, v in record.__dict__.items() if isinstance(v, (str, int, float, bool))}
    return _module_parameters(record), attributes
