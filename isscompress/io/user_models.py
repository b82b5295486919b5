"""Opening a checkpoint of a user's own model: its code named by ``--arch FILE.py:FACTORY`` (``FACTORY()`` returns
the model, example inputs and, to fine-tune, unlabelled batches), or its groups declared by ``--groups FILE.yaml``.

The result is a :class:`~isscompress.io.loading.Checkpoint` like any other, whose architecture is the traced module
(:class:`~isscompress.architectures.traced.TracedModel`): from here on every verb is the language-model stack's own.
A shrunk checkpoint still loads through the same factory: the model is resized to the file's tensors first.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..anymodel import TraceError, discover, load_groups, resize_to
from ..anymodel.resize import inputs_for
from ..anymodel.sharing import shared_names, with_shared
from ..anymodel.split import split_layers
from ..architectures.traced import KIND, TracedModel
from ..layers.cells import cell_of_module
from ..errors import CheckpointError, IsscompressError
from .files import read_checkpoint
from .loading import Checkpoint, is_onnx
from .onnx_models import module_state
from .metadata import Metadata
from .user_hooks import TaskMetrics, guarded_batches, guarded_task_loss, metric_rules


class ArchError(IsscompressError):
    """``--arch FILE.py:FACTORY`` cannot give a model."""


@dataclass(frozen=True)
class Factory:
    """What a user's ``--arch FILE.py:FACTORY`` gives."""

    model: nn.Module
    inputs: tuple
    batches: Any = None  # unlabelled input tuples (or a function giving them), for label-free fine-tuning
    evaluate: Any = None  # evaluate(model) -> {metric: value}: the task's own measure, which report shows
    keys: dict[str, str] | None = None  # FILE.py's CHECKPOINT_KEYS: a file's tensor name -> the model's name
    task_loss: Any = None  # FILE.py's task_loss(outputs, batch): the loss of labels it derives from a batch


def load_factory(arch: str) -> Factory:
    """Run the user's ``FACTORY()`` from ``FILE.py`` (their code, which they named on the command line).

    It returns ``(model, example_inputs)``, ``(model, example_inputs, batches)`` — unlabelled input tuples (or a
    function giving them) for label-free fine-tuning — or ``(model, example_inputs, batches, evaluate)``, where
    ``evaluate(model)`` returns the task's own metrics (``{"accuracy": 0.97}``) for ``report`` to show. A file that
    names its tensors otherwise than the model (a flat ``.npz`` of a numpy implementation) is mapped by the module's
    ``CHECKPOINT_KEYS`` dict: file name -> model name. A module-level ``task_loss(outputs, batch)`` gives the loss of
    labels the file derives from a batch, which ``distill.alpha`` below 1 mixes into fine-tuning."""
    file, _, name = arch.rpartition(":")
    if not file or not name:
        raise ArchError(f"--arch {arch!r} is not FILE.py:FACTORY.", "Example: --arch mymodel.py:make_model.")
    path = Path(file)
    module, made = _run_factory(path, name)
    if not (isinstance(made, tuple) and len(made) in (2, 3, 4) and isinstance(made[0], nn.Module)):
        raise ArchError(f"--arch: {name}() in {path} returned {type(made).__name__}, not (model, example_inputs).",
                        "Return the model and a tuple of example inputs for its forward (and, to fine-tune, "
                        "unlabelled input batches).")
    if len(made) == 4 and made[3] is not None and not callable(made[3]):
        raise ArchError(f"--arch: the fourth value {name}() in {path} returned is not a function.",
                        "Return evaluate, a function of the model giving {metric name: value}, or leave it out.")
    model, inputs, batches, evaluate = (*made, None, None)[:4]
    keys = _checkpoint_keys(getattr(module, "CHECKPOINT_KEYS", None), path)
    task_loss = getattr(module, "task_loss", None)
    if task_loss is not None and not callable(task_loss):
        raise ArchError(f"--arch: task_loss in {path} is not a function.", "Define task_loss(outputs, batch).")
    rules = metric_rules(getattr(module, "METRICS", None), path)
    evaluate = TaskMetrics(evaluate, rules) if evaluate is not None else None
    return Factory(model, inputs if isinstance(inputs, tuple) else (inputs,), guarded_batches(batches, path),
                   evaluate, keys, guarded_task_loss(task_loss, path))


def _run_factory(path: Path, name: str) -> tuple[Any, Any]:
    """Import ``path`` (its folder on sys.path meanwhile, so it can import its neighbours) and call ``name()``."""
    if not path.is_file():
        raise ArchError(f"--arch: {path} does not exist or is not a file.", "Check the path.")
    spec = importlib.util.spec_from_file_location(f"isscompress_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise ArchError(f"--arch: importing {path} failed: {type(err).__name__}: {err}.",
                            "Run the file with python to see the whole error.") from err
        factory = getattr(module, name, None)
        if not callable(factory):
            raise ArchError(f"--arch: {path} has no function {name!r}.",
                            f"Define {name}() returning (model, example_inputs).")
        try:
            return module, factory()
        except Exception as err:
            raise ArchError(f"--arch: {name}() in {path} failed: {type(err).__name__}: {err}.",
                            "Call it from python to see the whole error.") from err
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _checkpoint_keys(keys: Any, path: Path) -> dict[str, str] | None:
    """The file's ``CHECKPOINT_KEYS`` (file name -> model name), checked: strings, one file tensor per model weight."""
    if keys is None:
        return None
    if not (isinstance(keys, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items())):
        raise ArchError(f"--arch: CHECKPOINT_KEYS in {path} is not a dict of file names to model names.",
                        "Write it as {'enc_w_ih': 'encoder.weight_ih', ...}.")
    if len(set(keys.values())) != len(keys):
        targets = list(keys.values())
        twice = sorted({value for value in targets if targets.count(value) > 1})
        sources = [key for key, value in keys.items() if value == twice[0]]
        raise ArchError(f"--arch: CHECKPOINT_KEYS in {path} maps {', '.join(map(repr, sources))} all to "
                        f"{twice[0]!r}; one model weight can come from only one tensor of the file.",
                        "Map each file tensor to its own model name.")
    return keys


def _renamed(tensors: dict[str, Tensor], keys: dict[str, str], checkpoint: Path, arch: str) -> dict[str, Tensor]:
    """The file's tensors under the model's names (CHECKPOINT_KEYS); two tensors for one name are refused."""
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in tensors.items():
        name = keys.get(key, key)
        if name in renamed:
            raise CheckpointError(f"{checkpoint}: its tensors '{origin[name]}' and '{key}' both become the model's "
                                  f"'{name}' under CHECKPOINT_KEYS of {arch}; which one the model should hold is "
                                  "not said.", "Map the file's tensors to distinct model names.")
        renamed[name], origin[name] = value, key
    return renamed


def _fit(model: nn.Module, tensors: dict[str, Tensor], checkpoint: Path, stored_widths: bool = False) -> nn.Module:
    """The factory's model resized to the file's tensors. A file may hold a shared tensor under its first name only
    (as isscompress and safetensors' ``save_model`` write it): the model's sharing restores the others."""
    own = model.state_dict()
    tensors = with_shared(tensors, shared_names(model))
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "") if missing else "",
            f"not in the model {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else "")
            if unexpected else "") if part)
        raise CheckpointError(f"{checkpoint} does not match the model from --arch: {detail}.",
                              "Save the model's state_dict() with the same module names.")
    for key, value in tensors.items():  # a shrink only narrows: another rank or a wider size is another model
        if value.dim() != own[key].dim() or any(a > b for a, b in zip(value.shape, own[key].shape)):
            raise CheckpointError(f"{checkpoint}: '{key}' has shape {tuple(value.shape)}, but the model from --arch "
                                  f"holds it as {tuple(own[key].shape)}; a checkpoint of this model (or a shrunk one) "
                                  "is never larger or of another rank.",
                                  "Make the factory build the model the checkpoint was trained as (its sizes).")
    return resize_to(model, {k: v.to(own[k].dtype) for k, v in tensors.items()}, stored_widths)


def _recorded_split(metadata: Metadata, checkpoint: Path) -> tuple[str, ...]:
    """The multi-layer modules the file's fine-tuning split into layers of their own (``iss.split_layers``)."""
    split = (metadata.spec or {}).get("split", [])
    if not isinstance(split, list) or not all(isinstance(name, str) for name in split) or len(set(split)) < len(split):
        raise CheckpointError(f"{checkpoint}: its record's spec.split is {split!r}, not a list of distinct module "
                              "names.", "Write the file again with isscompress.")
    return tuple(split)


def _split(model: nn.Module, split: tuple[str, ...], checkpoint: Path) -> nn.Module:
    try:
        return split_layers(model, split)
    except ValueError as err:
        raise CheckpointError(f"{checkpoint} was fine-tuned with its multi-layer recurrent modules split into layers "
                              f"of their own, which the model from --arch cannot be: {err}.",
                              "Open it with the factory of the model it was made from.") from err


def _inputs_for_shrunk(model: nn.Module, inputs: tuple, metadata: Metadata) -> tuple:
    """The factory's example inputs fit the original model; for a checkpoint that a shrink made (it records the
    kept units), a state the inputs pass in is cut to the kept units, as the shrink's own check fed it."""
    widths = {m.hidden_size for m in model.modules() if cell_of_module(m) is not None}
    states = [leaf for leaf in tree_flatten(inputs)[0]
              if isinstance(leaf, Tensor) and leaf.is_floating_point() and leaf.dim() and leaf.shape[-1] in widths]
    if not metadata.kept or not states:  # no input can be a layer's state: nothing to cut, no trace needed
        return inputs
    # the factory's model: the original's sizes, which the inputs fit; a state holds recurrent units only, so the
    # other widths need not be traced
    plan = discover(model, inputs, features=False)
    names = {gs.name for gs in plan.group_sets}
    if not plan.input_labels or not names <= set(metadata.kept):
        return inputs
    return inputs_for(plan, inputs, {name: torch.tensor(metadata.kept[name]) for name in names})[1]


def _first_batch(batches: Any) -> tuple[tuple, ...]:
    """The factory's first unlabelled batch, when it gives any: a shrink is checked on it too."""
    if batches is None:
        return ()
    first = next(iter(batches() if callable(batches) else batches), None)
    return (first if isinstance(first, tuple) else (first,),) if first is not None else ()


def open_user_model(checkpoint: str | os.PathLike, arch: str | None = None,
                    groups: str | os.PathLike | None = None) -> Checkpoint:
    """Read the state dict, build the model from ``arch`` and find its groups (or read them from ``groups``)."""
    if arch is None and groups is None:
        raise ArchError("A user model needs --arch FILE.py:FACTORY (its code) or --groups FILE.yaml (its ISS groups).",
                        "See docs/any-model.md.")
    raw = module_state(checkpoint) if is_onnx(checkpoint) else read_checkpoint(checkpoint)
    tensors = dict(raw.tensors)
    metadata = Metadata.from_header(raw.metadata, str(raw.path))
    model = inputs = batches = evaluate = factory = None
    if arch is not None:
        factory = load_factory(arch)
        factory_model, inputs, batches, evaluate = factory.model, factory.inputs, factory.batches, factory.evaluate
        tensors = _renamed(tensors, factory.keys or {}, raw.path, arch)
        split = _recorded_split(metadata, raw.path)
        factory_model = _split(factory_model, split, raw.path) if split else factory_model
        inputs = _inputs_for_shrunk(factory_model, inputs, metadata)
        stored = bool((metadata.spec or {}).get("stored_widths") is True)  # as the shrink that wrote it chose
        model = _fit(factory_model, tensors, raw.path, stored_widths=stored)
    if groups is not None:
        plan = load_groups(groups, tensors)
    else:
        try:
            plan = discover(model, inputs)
        except TraceError:  # a shrunk model whose forward reads self.hidden_size-like attributes: as shrink ran it
            model = _fit(factory_model, tensors, raw.path, stored_widths=True)
            plan = discover(model, inputs)
    spec = TracedModel.of(model, plan, inputs, _first_batch(batches), batches, evaluate, arch,
                          factory.task_loss if factory is not None else None, split if arch is not None else ())
    state = spec.canonical({k: v.detach() for k, v in model.state_dict().items()}) if model is not None else tensors
    family = metadata.family or KIND
    return Checkpoint(spec, state, family, KIND, replace(metadata, architecture=KIND), raw.path)
