"""One fine-tuning stage, for every kind of model: resume, the files beside the output, the hooks, stop signals
and the result are here once. What differs between a language model and a user's model (how it trains, what its
file holds, its own hooks) is the :class:`StageParts` each brings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, Interrupted
from ..io.files import CHECKPOINT_SUFFIXES, check_checkpoint_output, write_checkpoint
from ..io.loading import Checkpoint
from ..io.metadata import Metadata
from ..outputs import append_line, check_output_path, refuse_link
from ..recipe import Recipe, Schedule
from ..training.budget import budget_cost
from ..training.distributed import Distributed
from ..training.hooks import Event, Hook, Report
from ..training.iss_hook import GroupLassoHook
from ..training.loop import TrainState
from ..training.state_file import read_train_state, write_train_state

STAGES = ("finetune", "recover")


@dataclass
class FinetuneResult:
    checkpoint: Checkpoint  # the trained model (``path`` set when it was written)
    stage: str
    events: list[Event] = field(default_factory=list)
    widths: dict[str, int] = field(default_factory=dict)  # units per set a shrink at the recipe's threshold keeps
    written: bool = False  # whether this call wrote the output (a resume with nothing left to train writes nothing)

    @property
    def output(self) -> Path | None:
        return self.checkpoint.path

    @property
    def epochs(self) -> list[Event]:
        return [e for e in self.events if e["event"] == "epoch"]

    def to_dict(self) -> dict:
        return {"output": str(self.output), "stage": self.stage, "epochs": self.epochs, "widths": self.widths}


@dataclass
class StageParts:
    """What one kind of model brings to a stage."""

    model: nn.Module  # the model to train, holding a copy of the checkpoint's weights
    weights: Callable[[nn.Module], dict[str, Tensor]]  # what its file holds (views of its parameters)
    fit: Callable[[nn.Module, list[Hook], Distributed, TrainState | None], object]  # runs the training loop
    finish: Callable[[nn.Module, Path | None], Checkpoint]  # the trained checkpoint
    metadata: Metadata  # what a save writes in the file's header
    hooks: list[Hook] = field(default_factory=list)  # the kind's own (task metrics), before the keeper
    keeper: Hook | None = None  # ``keep: best``
    write: Callable[[Path, dict[str, Tensor], Metadata], None] = write_checkpoint  # the file a save writes (an ONNX
    # graph fine-tuned through its PyTorch module is written back as .onnx)


def side_files(output: Path) -> tuple[Path, Path]:
    """The training-state file (for --resume) and the JSON-lines log written beside an output."""
    return output.with_name(output.name + ".train-state.pt"), output.with_name(output.name + ".log.jsonl")


def check_training_outputs(output: Path, force: bool, inputs: tuple[Path, ...], resume: bool = False,
                           suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> None:
    """Every file a training run writes (the checkpoint, its resume state, its log) is an output: never an
    input, and replaced only with ``force``. Resuming continues this run's own files, so they may exist."""
    check_checkpoint_output(output, force=force or resume, inputs=inputs, suffixes=suffixes)
    for path in side_files(output):
        check_output_path(path, force=force or resume, inputs=inputs)
        refuse_link(path)


def stage_schedule(recipe: Recipe, stage: str) -> Schedule:
    if stage == "recover":
        return recipe.recover or recipe.finetune
    return recipe.finetune


def resume_weights(output: Path | None, resume: bool, recipe: Recipe,
                   reference: Mapping[str, Tensor]) -> tuple[dict[str, Tensor] | None, TrainState | None]:
    """With ``resume``: the weights and training state of the last save beside ``output`` (checked against
    ``reference``, the weights of the model being resumed); else nothing (a fresh start)."""
    if not resume:
        return None, None
    if output is None:
        raise CheckpointError("Resuming needs the output file of the run to resume.", "Pass the output path.")
    return read_train_state(side_files(output)[0], recipe.to_yaml(), reference)


class TrainingFiles(Hook):
    """The file edge of a training run: the checkpoint and its resume state at every save point, and
    the JSON-lines log of every event (main process only). ``weights`` gives what a model's file holds
    (a language-model stack's canonical layout, a user model's own state dict). A fresh run starts a new log;
    a run that fails before its first save removes the log it started, so a plain retry is not refused."""

    def __init__(self, output: Path, metadata: Metadata, recipe: Recipe, stage: str, dist: Distributed,
                 weights: Callable[[nn.Module], dict[str, Tensor]], resume: bool = False,
                 write: Callable[[Path, dict[str, Tensor], Metadata], None] = write_checkpoint) -> None:
        self.output, self.metadata, self.recipe, self.stage, self.dist = output, metadata, recipe, stage, dist
        self.weights, self.write = weights, write
        self.state_file, self.log_file = side_files(output)
        self.resumed, self.wrote = resume, False  # a resumed run's files were saved before: never this run's to remove
        if not resume and dist.is_main:
            self.log_file.unlink(missing_ok=True)

    def on_event(self, event: Event) -> None:
        if self.dist.is_main:
            append_line(self.log_file, json.dumps({"stage": self.stage, **event}))

    def on_checkpoint(self, loop) -> None:
        weights = {k: v.detach() for k, v in self.weights(loop.inner).items()}
        write_train_state(self.state_file, loop.state, weights, self.recipe.to_yaml())
        self.write(self.output, weights, self.metadata)
        self.wrote = True

    def discard_unsaved(self) -> None:
        """After a failure: the log of a run that saved nothing is not worth keeping, and would refuse a retry."""
        if not self.wrote and not self.resumed and self.dist.is_main:
            self.log_file.unlink(missing_ok=True)


def lasso_hook(checkpoint: Checkpoint, recipe: Recipe) -> GroupLassoHook:
    """The recipe's group Lasso for a checkpoint of any architecture, with its budget (iss.target) when set."""
    budget = None
    if recipe.iss.target is not None:
        cost, limit, _ = budget_cost(checkpoint.spec, recipe.iss.target, recipe.iss.widths)
        budget = (cost, limit)
    return GroupLassoHook(checkpoint.group_sets, recipe.iss, recipe.shrink.threshold, budget)


def run_stage(checkpoint: Checkpoint, recipe: Recipe, stage: str, output: Path | None, parts: StageParts, *,
              resume: bool, on_event: Callable[[Event], None]) -> FinetuneResult:
    """Train ``parts.model`` for one stage: the recipe's group Lasso in ``finetune`` (when it has an ``iss``), the
    files beside ``output`` at every save, resumed from them with ``resume``. A failure other than an interruption
    (whose saved state is the point) removes what a run that saved nothing left behind."""
    model = parts.model
    weights, state = resume_weights(output, resume, recipe, parts.weights(model))
    if weights is not None:
        with torch.no_grad():  # the views the file was written from, given back their saved values
            for name, tensor in parts.weights(model).items():
                tensor.copy_(weights[name])
    dist = Distributed.from_environment(stage_schedule(recipe, stage).device)
    result = FinetuneResult(checkpoint, stage)
    files = (TrainingFiles(output, parts.metadata, recipe, stage, dist, parts.weights, resume, parts.write)
             if output is not None else None)
    hooks: list[Hook] = [lasso_hook(checkpoint, recipe)] if stage == "finetune" and recipe.iss is not None else []
    hooks += [hook for hook in (files, *parts.hooks, parts.keeper) if hook is not None]
    hooks.append(Report(lambda event: (result.events.append(event), on_event(event))))
    try:
        parts.fit(model, hooks, dist, state)
    except Interrupted:
        raise
    except BaseException:
        if files is not None:
            files.discard_unsaved()
        raise
    finally:
        dist.close()
    result.checkpoint = parts.finish(model, output)
    result.written = files is not None and files.wrote
    return result
