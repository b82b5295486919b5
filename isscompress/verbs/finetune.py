"""``finetune``: ISS group-Lasso fine-tuning (or, without ISS, recovery fine-tuning) from a recipe;
``train``: a new model from scratch.

Both work on models in memory and return the trained checkpoint; given an output path they also
write it at every save point (atomically, with a training-state file beside it for ``--resume``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..architectures.stack import ModelSpec
from ..architectures.stack_module import initialised_model
from ..core.architecture import language_model_facts
from ..core.groups import all_unit_norms
from ..core.thresholding import kept_widths
from ..data import Vocabulary, build_vocabulary, read_vocabulary
from ..errors import CheckpointError, Interrupted, IsscompressError, RecipeError
from ..io.files import check_checkpoint_output, write_checkpoint
from ..outputs import append_line, check_output_path, refuse_link
from ..io.loading import Checkpoint, as_checkpoint, source_files
from ..io.metadata import Metadata
from ..recipe import Recipe, Schedule, check_layer_names, load_recipe
from ..training.budget import budget_cost
from ..training.distributed import Distributed
from ..training.hooks import Event, GroupLassoHook, Hook, Report, Save
from ..training.keep_best import perplexity_keeper
from ..training.loop import TrainState, fit
from ..training.state_file import read_train_state, write_train_state
from ..training.objectives import Distillation, Objective
from .preparation import resolve_vocabulary, training_batches

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


def side_files(output: Path) -> tuple[Path, Path]:
    """The training-state file (for --resume) and the JSON-lines log written beside an output."""
    return output.with_name(output.name + ".train-state.pt"), output.with_name(output.name + ".log.jsonl")


def check_training_outputs(output: Path, force: bool, inputs: tuple[Path, ...], resume: bool = False) -> None:
    """Every file a training run writes (the checkpoint, its resume state, its log) is an output: never an
    input, and replaced only with ``force``. Resuming continues this run's own files, so they may exist."""
    check_checkpoint_output(output, force=force or resume, inputs=inputs)
    for path in side_files(output):
        check_output_path(path, force=force or resume, inputs=inputs)
        refuse_link(path)


def stage_schedule(recipe: Recipe, stage: str) -> Schedule:
    if stage == "recover":
        return recipe.recover or recipe.finetune
    return recipe.finetune


def resume_weights(output: Path | None, resume: bool, recipe: Recipe,
                   reference: dict[str, Tensor]) -> tuple[dict[str, Tensor] | None, TrainState | None]:
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
                 weights: Callable[[nn.Module], dict[str, Tensor]] = lambda model: model.canonical_state(),
                 resume: bool = False) -> None:
        self.output, self.metadata, self.recipe, self.stage, self.dist = output, metadata, recipe, stage, dist
        self.weights = weights
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
        write_checkpoint(self.output, weights, self.metadata)
        self.wrote = True

    def discard_unsaved(self) -> None:
        """After a failure: the log of a run that saved nothing is not worth keeping, and would refuse a retry."""
        if not self.wrote and not self.resumed and self.dist.is_main:
            self.log_file.unlink(missing_ok=True)


def run_training(train: Callable[[], object], files: TrainingFiles | None) -> None:
    """Run ``train``; on a failure other than an interruption (whose saved state is the point), remove what a
    run that saved nothing left behind."""
    try:
        train()
    except Interrupted:
        raise
    except BaseException:
        if files is not None:
            files.discard_unsaved()
        raise


def lasso_hook(checkpoint: Checkpoint, recipe: Recipe) -> GroupLassoHook:
    """The recipe's group Lasso for a checkpoint of any architecture, with its budget (iss.target) when set."""
    budget = None
    if recipe.iss.target is not None:
        cost, limit, _ = budget_cost(checkpoint.spec, recipe.iss.target, recipe.iss.widths)
        budget = (cost, limit)
    return GroupLassoHook(checkpoint.group_sets, recipe.iss, recipe.shrink.threshold, budget)


def _objective(recipe: Recipe, stage: str, checkpoint: Checkpoint, device: torch.device,
               teacher: Checkpoint | None) -> Objective | None:
    """Distillation from the recipe's teacher in the stages that ask for it; else the labels alone (None)."""
    distill = recipe.distill
    if distill is None or stage not in distill.stages:
        return None
    if distill.loss != "kl":
        raise RecipeError(f"distill.loss: {distill.loss!r} is for the any-model path; a language model distils "
                          "with 'kl'.", "Remove distill.loss or set it to kl.")
    if teacher is None:
        teacher = checkpoint if distill.teacher == "source" else as_checkpoint(distill.teacher, recipe.model.family)
    if teacher.spec.vocab_size != checkpoint.spec.vocab_size:
        raise RecipeError(f"distill.teacher: {distill.teacher} has {teacher.spec.vocab_size} tokens, the model "
                          f"{checkpoint.spec.vocab_size}.", "Use the model this one was made from.")
    model = teacher.spec.build({k: v.float() for k, v in teacher.state.items()}).to(device)
    return Distillation(model, distill.temperature, distill.alpha)


def _trained(model: torch.nn.Module, spec, family: str, metadata: Metadata, output: Path | None) -> Checkpoint:
    state = {k: v.detach().cpu() for k, v in model.canonical_state().items()}
    return Checkpoint(spec, state, family, "isscompress", metadata, output)


def finetune(
    source: Checkpoint | str | os.PathLike,
    recipe: Recipe | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    stage: str = "finetune",
    resume: bool = False,
    force: bool = False,
    on_event: Callable[[Event], None] = lambda event: None,
    teacher: Checkpoint | None = None,
    arch: str | None = None,
    groups: str | os.PathLike | None = None,
) -> FinetuneResult:
    """Fine-tune ``source`` with the recipe's ISS section (``stage="finetune"``) or without ISS
    (``stage="recover"``, or a recipe with no ``iss``); with ``output``, write it at every save.

    With a ``distill`` section, ``teacher`` (default: the recipe's ``distill.teacher``) is what the
    student matches; ``run`` passes the original model to the recovery of the shrunk one. A user's own model
    (``arch``, FILE.py:FACTORY) learns label-free from its original's outputs on the factory's batches."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if stage not in STAGES:
        raise RecipeError(f"Unknown stage '{stage}'.", f"Use one of: {', '.join(STAGES)}.")
    output = Path(output) if output is not None else None
    if output is not None:
        check_training_outputs(output, force, source_files(source) + recipe.input_files(), resume)
    checkpoint = as_checkpoint(source, recipe.model.family if arch is None else None, arch, groups)
    if stage == "finetune":  # the ISS section applies to this stage only (recovery runs on the shrunk model)
        if recipe.iss is not None and recipe.iss.split_layers:
            from .finetune_user import layerwise

            checkpoint = layerwise(checkpoint)
        check_layer_names(recipe, checkpoint.group_sets, "")
    if not language_model_facts(checkpoint.spec) and hasattr(checkpoint.spec, "batches"):
        from .finetune_user import finetune_traced  # it builds on this module's training files

        result = finetune_traced(checkpoint, recipe, output, stage=stage, resume=resume, on_event=on_event,
                                 teacher=teacher)
    else:
        result = _finetune_language_model(checkpoint, recipe, output, stage, resume, on_event, teacher)
    sets = result.checkpoint.group_sets
    result.widths = kept_widths(all_unit_norms(result.checkpoint.state, sets), sets, recipe.shrink.threshold,
                                recipe.widths)
    return result


def _finetune_language_model(checkpoint: Checkpoint, recipe: Recipe, output: Path | None, stage: str, resume: bool,
                             on_event: Callable[[Event], None], teacher: Checkpoint | None) -> FinetuneResult:
    vocabulary, _ = resolve_vocabulary(checkpoint, recipe.data)
    schedule = stage_schedule(recipe, stage)
    train_data, valid = training_batches(recipe, vocabulary, schedule)
    keeper = perplexity_keeper(schedule.keep, valid is not None, stage)
    metadata = replace(checkpoint.metadata.derived(stage, checkpoint.name, checkpoint.sha256, checkpoint.family),
                       architecture=checkpoint.spec.kind, spec=checkpoint.spec.to_dict(), recipe=recipe.to_yaml(),
                       vocabulary=vocabulary.words, level=recipe.data.level)
    weights, state = resume_weights(output, resume, recipe, checkpoint.state)
    model = checkpoint.spec.build({k: v.float().clone() for k, v in (weights or checkpoint.state).items()},
                                  dropout=schedule.dropout, variational=schedule.variational_dropout)
    dist = Distributed.from_environment(schedule.device)
    result = FinetuneResult(checkpoint, stage)
    files = TrainingFiles(output, metadata, recipe, stage, dist, resume=resume) if output is not None else None
    hooks: list[Hook] = [lasso_hook(checkpoint, recipe)] if stage == "finetune" and recipe.iss is not None else []
    hooks += [hook for hook in (files, keeper) if hook is not None]
    hooks.append(Report(lambda event: (result.events.append(event), on_event(event))))
    objective = _objective(recipe, stage, checkpoint, dist.device, teacher)
    try:
        run_training(lambda: fit(model, train_data, valid, schedule, objective=objective, hooks=hooks, dist=dist,
                                 state=state, eval_bptt=recipe.evaluate.bptt), files)
    finally:
        dist.close()
    result.checkpoint = _trained(model, checkpoint.spec, checkpoint.family, metadata, output)
    result.written = files is not None and files.wrote
    return result


def _vocabulary(recipe: Recipe) -> Vocabulary:
    paths = [p for p in (recipe.data.train, recipe.data.valid, recipe.data.test) if p is not None]
    vocab = recipe.data.vocab
    return build_vocabulary(paths, recipe.data.level) if vocab in ("auto", "corpus") else read_vocabulary(vocab)


def train(
    spec: ModelSpec,
    recipe: Recipe | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    force: bool = False,
    on_event: Callable[[Event], None] = lambda event: None,
) -> FinetuneResult:
    """Train a new language model of ``spec`` from scratch with the recipe's ``finetune`` schedule
    (no ISS): a baseline to compress, or the "direct design" of given widths to compare ISS with."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    output = check_checkpoint_output(output, force=force) if output is not None else None
    vocabulary = _vocabulary(recipe)
    spec = replace(spec, vocab_size=len(vocabulary))
    torch.manual_seed(recipe.finetune.seed)
    try:
        model = initialised_model(spec, recipe.finetune.dropout, recipe.finetune.variational_dropout)
    except (MemoryError, RuntimeError) as err:  # a width of billions: the allocation itself fails
        said = " ".join(str(err).split())[:240]
        raise IsscompressError(f"A model of widths {[layer.hidden_size for layer in spec.layers]} and "
                               f"{spec.vocab_size:,} tokens could not be allocated ({type(err).__name__}: {said}).",
                               "Choose smaller widths (-w) or embedding (-e).") from None
    schedule = recipe.finetune
    train_data, valid = training_batches(recipe, vocabulary, schedule)
    metadata = Metadata(family="isscompress", architecture=spec.kind, spec=spec.to_dict(), stage="train",
                        recipe=recipe.to_yaml(), vocabulary=vocabulary.words, level=recipe.data.level)
    empty = Checkpoint(spec, {}, "isscompress", "isscompress", metadata, None)
    result = FinetuneResult(empty, "train")
    hooks: list[Hook] = [Report(lambda event: (result.events.append(event), on_event(event)))]
    if output is not None:
        hooks.append(Save(lambda trained, state: write_checkpoint(output, trained.canonical_state(), metadata)))
    try:
        fit(model, train_data, valid, schedule, hooks=hooks, dist=Distributed.from_environment(schedule.device),
            eval_bptt=recipe.evaluate.bptt)
    except Interrupted as err:  # train keeps no resume state: the loop's "--resume" hint is not for it
        saved = f"the model trained so far is in {output}" if output is not None else "nothing was written"
        raise Interrupted(f"{err.message.split(';')[0]}; {saved}.",
                          "train cannot resume: run it again, or fine-tune what was saved with isscompress finetune "
                          f"{output or 'OUT'} -r RECIPE --stage recover -o NEW.safetensors.") from None
    result.checkpoint = _trained(model, spec, "isscompress", metadata, output)
    return result
