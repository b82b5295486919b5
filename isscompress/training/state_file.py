"""The resume state file (``OUT.train-state.pt``): written atomically at every save point, read back as input.

A state file lies beside the output and anyone could have replaced it, so reading it back is reading a file like
any checkpoint: torch's zip format only (the legacy format allocates the sizes it declares), every member's size
taken from the read budget before torch inflates it, ``weights_only=True``, no tensor that views more bytes than
its storage holds, and every field checked for type and range — against the model being resumed — before the loop
trusts it. A bad file is refused by name, never a crash halfway through a run.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..outputs import atomic_write
from ..io.other_formats import check_zip_sizes, zip_kind
from .loop import TrainState

STATE_FIELDS = tuple(f.name for f in fields(TrainState))
SAVED_KEYS = frozenset({*STATE_FIELDS, "model", "recipe"})
RESTART = "Start the fine-tuning again without --resume (with --force to replace its outputs)."


def write_train_state(path: Path, state: TrainState, weights: Mapping[str, Tensor], recipe_yaml: str) -> None:
    """Save weights and training position in one file (atomically), so a kill never pairs the wrong two."""
    data = {**state.to_dict(), "model": dict(weights), "recipe": recipe_yaml}
    atomic_write(path, lambda temporary: torch.save(data, temporary))


def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a training state this run can continue from: {what}.", RESTART)


def _load(path: Path) -> Any:
    if not path.is_file() or path.is_symlink():
        what = "is missing" if not path.exists() and not path.is_symlink() else "is not a regular file"
        raise CheckpointError(f"Nothing to resume: {path} {what}.", "Run without --resume to start the fine-tuning.")
    with open(path, "rb") as handle:
        zipped = handle.read(4) == b"PK\x03\x04"
    if not zipped or zip_kind(path) != "torch-zip":
        raise _refuse(path, "it is not a torch.save zip archive as isscompress writes them")
    check_zip_sizes(path)  # a deflated member is a bomb: its declared size is taken from the read budget first
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged or crafted file makes torch.load raise nearly anything
        raise _refuse(path, f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'unreadable'}")


def _tensors(value: Any) -> list[Tensor]:
    """The tensors of a (nested) list/tuple/dict, for the storage check."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _check_number(path: Path, name: str, value: Any, kind: type, low: float, allow_inf: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise _refuse(path, f"'{name}' is {type(value).__name__}, not {'a number' if kind is float else 'an integer'}")
    if math.isnan(value) or value < low or (math.isinf(value) and not allow_inf):
        raise _refuse(path, f"'{name}' is {value}, outside what training can reach (at least {low})")


def _check_hidden(path: Path, hidden: Any) -> None:
    """A carried hidden state: a list with, per layer, a tensor or a tuple of tensors (h, c)."""
    if hidden is None:
        return
    layers = hidden if isinstance(hidden, list) else None
    if layers is None or not all(isinstance(h, Tensor) or (isinstance(h, tuple) and h and all(
            isinstance(t, Tensor) for t in h)) for h in layers):
        raise _refuse(path, "'hidden' is not a list of per-layer state tensors")
    if not all(t.is_floating_point() and t.dim() == 3 and bool(torch.isfinite(t).all()) for t in _tensors(layers)):
        raise _refuse(path, "'hidden' holds tensors that are not finite 3-D floating-point states")


def read_train_state(path: Path, recipe_yaml: str, reference: Mapping[str, Tensor]) -> tuple[dict[str, Tensor],
                                                                                            TrainState]:
    """Weights and training state from the last save, checked against the model being resumed (``reference``:
    its weights, whose names and shapes the saved ones must have) and the recipe it ran with."""
    saved = _load(path)
    if not isinstance(saved, dict) or not all(isinstance(key, str) for key in saved):
        raise _refuse(path, f"it holds a {type(saved).__name__}, not the dict of a training state")
    saved.setdefault("hooks", {})  # a state written before hooks kept numbers across a resume
    if set(saved) != SAVED_KEYS:
        missing, extra = sorted(SAVED_KEYS - set(saved)), sorted(set(saved) - SAVED_KEYS)
        raise _refuse(path, "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                         f"unknown {', '.join(extra)}" if extra else "") if part))
    for tensor in _tensors(saved):  # a view larger than its storage (stride 0) would allocate on first copy
        needed = tensor.numel() * tensor.element_size()
        if tensor.numel() and (needed > tensor.untyped_storage().nbytes() or 0 in tensor.stride()):
            raise _refuse(path, f"a tensor of shape {tuple(tensor.shape)} views more bytes than it stores")
    if saved["recipe"] != recipe_yaml:
        raise CheckpointError(f"{path} was made with a different recipe.",
                              "Resume with the same recipe, or start again without --resume.")
    weights = saved["model"]
    if not isinstance(weights, dict) or set(weights) != set(reference) or not all(
            isinstance(w, Tensor) and w.shape == reference[k].shape and w.is_floating_point() == reference[k]
            .is_floating_point() for k, w in weights.items()):
        raise _refuse(path, "its weights are not those of this model (other names, shapes or types)")
    if not all(bool(torch.isfinite(w).all()) for w in weights.values() if w.is_floating_point()):
        raise _refuse(path, "its weights hold NaN or Inf")
    _check_number(path, "epoch", saved["epoch"], int, 1)
    _check_number(path, "window", saved["window"], int, 0)
    _check_number(path, "step", saved["step"], int, 0)
    _check_number(path, "lr", saved["lr"], float, 0)
    _check_number(path, "best_valid", saved["best_valid"], float, 0, allow_inf=True)
    if saved["lr"] == 0:
        raise _refuse(path, "'lr' is 0, which no schedule decays to")
    if not isinstance(saved["optimizer"], dict):
        raise _refuse(path, "'optimizer' is not an optimizer's state dict")
    rng = saved["rng"]
    if rng is not None and not (isinstance(rng, Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
        raise _refuse(path, "'rng' is not a random generator's state")
    _check_hidden(path, saved["hidden"])
    hooks = saved["hooks"]
    if not isinstance(hooks, dict) or not all(isinstance(k, str) and isinstance(v, float) and math.isfinite(v) and v > 0
                                              for k, v in hooks.items()):
        raise _refuse(path, "'hooks' is not a mapping of names to positive numbers")
    return weights, TrainState(**{name: saved[name] for name in STATE_FIELDS})
