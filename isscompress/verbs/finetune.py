"""``finetune``: ISS group-Lasso fine-tuning (or, without ISS, recovery fine-tuning) from a recipe;
``train``: a new model from scratch.

Both work on models in memory and return the trained checkpoint; given an output path they also
write it at every save point (atomically, with a training-state file beside it for ``--resume``).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..architectures.stack import ModelSpec
from ..architectures.stack_module import initialised_model
from ..core.architecture import language_model_facts
from ..core.groups import all_unit_norms
from ..core.thresholding import kept_widths
from ..data import Vocabulary, build_vocabulary, read_vocabulary
from ..errors import Interrupted, IsscompressError, RecipeError
from ..io.files import check_checkpoint_output, write_checkpoint
from ..io.loading import Checkpoint, as_checkpoint, is_onnx, output_suffixes, source_files
from ..io.metadata import Metadata
from ..recipe import Recipe, check_layer_names, load_recipe
from ..training.distributed import Distributed
from ..training.hooks import Event, Hook, Report, Save
from ..training.keep_best import perplexity_keeper
from ..training.loop import TrainState, fit
from ..training.objectives import Distillation, Objective
from .finetune_user import label_free_parts, layerwise
from .preparation import resolve_vocabulary, training_batches
from .stage import STAGES, FinetuneResult, StageParts, check_training_outputs, run_stage, side_files, stage_schedule

__all__ = ["FinetuneResult", "finetune", "side_files", "train"]


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
    if is_onnx(source) and arch is None:
        raise IsscompressError(f"{source_files(source)[0].name if source_files(source) else 'The model'} is an ONNX "
                               "graph, which holds no training data or loss: fine-tuning it needs --arch "
                               "FILE.py:FACTORY whose model is isscompress.onnx_module(the .onnx) and whose batches "
                               "are the task's inputs.", "See docs/any-model.md (an ONNX graph); the output is an "
                               ".onnx with the removed units zeroed, which `isscompress shrink` makes smaller.")
    output = Path(output) if output is not None else None
    if output is not None:
        check_training_outputs(output, force, source_files(source) + recipe.input_files(), resume,
                               output_suffixes(source))
    checkpoint = as_checkpoint(source, recipe.model.family if arch is None else None, arch, groups)
    if stage == "finetune":  # the ISS section applies to this stage only (recovery runs on the shrunk model)
        if recipe.iss is not None and recipe.iss.split_layers:
            checkpoint = layerwise(checkpoint)
        check_layer_names(recipe, checkpoint.group_sets, "")
    if not language_model_facts(checkpoint.spec) and hasattr(checkpoint.spec, "batches"):
        parts = label_free_parts(checkpoint, recipe, stage, teacher)
    else:
        parts = _language_model_parts(checkpoint, recipe, stage, teacher)
    result = run_stage(checkpoint, recipe, stage, output, parts, resume=resume, on_event=on_event)
    sets = result.checkpoint.group_sets
    result.widths = kept_widths(all_unit_norms(result.checkpoint.state, sets), sets, recipe.shrink.threshold,
                                recipe.widths)
    return result


def _language_model_parts(checkpoint: Checkpoint, recipe: Recipe, stage: str, teacher: Checkpoint | None
                          ) -> StageParts:
    """A language model's stage: its recipe's text in truncated-BPTT windows, validated by perplexity."""
    vocabulary, _ = resolve_vocabulary(checkpoint, recipe.data)
    schedule = stage_schedule(recipe, stage)
    train_data, valid = training_batches(recipe, vocabulary, schedule)
    metadata = replace(checkpoint.metadata.derived(stage, checkpoint.name, checkpoint.sha256, checkpoint.family),
                       architecture=checkpoint.spec.kind, spec=checkpoint.spec.to_dict(), recipe=recipe.to_yaml(),
                       vocabulary=vocabulary.words, level=recipe.data.level)
    model = checkpoint.spec.build({k: v.float().clone() for k, v in checkpoint.state.items()},
                                  dropout=schedule.dropout, variational=schedule.variational_dropout)

    def train(model: nn.Module, hooks: list[Hook], dist: Distributed, state: TrainState | None) -> None:
        objective = _objective(recipe, stage, checkpoint, dist.device, teacher)
        fit(model, train_data, valid, schedule, objective=objective, hooks=hooks, dist=dist, state=state,
            eval_bptt=recipe.evaluate.bptt)

    return StageParts(model, lambda trained: trained.canonical_state(), train,
                      lambda trained, output: _trained(trained, checkpoint.spec, checkpoint.family, metadata, output),
                      metadata, keeper=perplexity_keeper(schedule.keep, valid is not None, stage))


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
