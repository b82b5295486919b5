"""The label-free branch of ``finetune``: ISS fine-tuning of a user's own model without labels, on the training loop every model
shares — the recipe path's regulariser hook, resume state, log, save points, stop signals, NaN guard, devices
and DDP. Every recipe field either applies to a user model or is refused with the reason; none is ignored."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..errors import RecipeError, ShrinkError
from ..io.loading import Checkpoint, as_checkpoint
from ..io.user_models import ArchError
from ..recipe import DistillSection, Recipe
from ..training.distributed import Distributed
from ..training.hooks import Event, Hook, Report, TaskMetricHook
from ..training.keep_best import metric_keeper
from ..training.loop import fit_task
from ..training.tasks import LabelFreeTask
from .finetune import FinetuneResult, TrainingFiles, lasso_hook, resume_weights, run_training, stage_schedule

# (section, field, why it cannot apply to a user model): set in a recipe, each is refused by name
INAPPLICABLE = (
    ("model", "family", "a user model is built by its --arch factory"),
    ("data", "*", "a user model's batches come from its --arch factory (its third return value)"),
    ("evaluate", "*", "a user model has no perplexity to evaluate; report --arch measures its output gap"),
    ("schedule", "batch_size", "the factory's batches are used as they are"),
    ("schedule", "bptt", "the factory's batches are used as they are"),
    ("schedule", "dropout", "a user model applies its own dropout modules"),
    ("schedule", "variational_dropout", "a user model applies its own dropout modules"),
    ("schedule", "decay_on_plateau", "label-free fine-tuning has no validation perplexity to watch"),
    ("distill", "stages", "a user model always learns from its original (label-free)"),
)


def _refuse_inapplicable(recipe: Recipe, stage: str, task_loss: Any) -> None:
    sections = {"model": recipe.model, "data": recipe.data, "evaluate": recipe.evaluate, "iss": recipe.iss,
                "distill": recipe.distill, "schedule": stage_schedule(recipe, stage)}
    for section, name, why in INAPPLICABLE:
        values = sections[section]
        given = sorted(values.model_fields_set) if values is not None else []
        if given and (name == "*" or name in given):
            key = f"{'finetune' if section == 'schedule' else section}.{given[0] if name == '*' else name}"
            raise RecipeError(f"{key} does not apply to a user model: {why}.",
                              "Remove it from the recipe (it is refused rather than silently ignored).")
    distill = recipe.distill
    if distill is not None and distill.alpha != 1.0 and task_loss is None:
        raise RecipeError(f"distill.alpha is {distill.alpha}: the model's factory gives no task loss, so it is "
                          "fine-tuned label-free (alpha 1).", "Set distill.alpha to 1, or define task_loss(outputs, "
                          "batch) in the --arch file (the loss of the task's own labels, derived from the batch).")


def layerwise(checkpoint: Checkpoint) -> Checkpoint:
    """``iss.split_layers``: the model with its multi-layer recurrent modules split, its state renamed to match."""
    if not hasattr(checkpoint.spec, "layerwise"):
        raise RecipeError("iss.split_layers is for a user model's multi-layer nn.LSTM/GRU/RNN (opened with --arch); "
                          "the language-model stack's layers already have widths of their own.",
                          "Remove iss.split_layers from the recipe.")
    try:
        spec = replace(checkpoint.spec, module=checkpoint.spec.build(checkpoint.state)).layerwise()
    except ShrinkError as err:
        raise RecipeError(f"iss.split_layers: {err.message}", err.hint) from err
    state = spec.canonical({k: v.detach() for k, v in spec.module.state_dict().items()})
    return replace(checkpoint, spec=spec, state=state)


def finetune_traced(checkpoint: Checkpoint, recipe: Recipe, output: Path | None, *, stage: str = "finetune",
                    resume: bool = False, on_event: Callable[[Event], None] = lambda event: None,
                    teacher: Checkpoint | None = None) -> FinetuneResult:
    """Fine-tune a user's model towards its original's outputs on the factory's unlabelled batches: with the
    recipe's ``iss`` section (``stage="finetune"``) or without it (``"recover"``, the ``recover`` schedule). The
    teacher is the model as read, or ``distill.teacher`` (a checkpoint of the same model, opened with the same
    factory: the dense original teaching a shrunk model's recovery), or ``teacher``.
    :func:`isscompress.finetune` calls it for a model that brings its own batches; the caller checked the output."""
    lasso = stage == "finetune"
    if lasso and recipe.iss is None:
        raise RecipeError("The recipe has no iss section, so fine-tuning would not remove anything.",
                          "Add iss: {lambda: ..., method: proximal}.")
    spec = checkpoint.spec
    _refuse_inapplicable(recipe, stage, getattr(spec, "task_loss", None))
    if getattr(spec, "batches", None) is None:
        raise ArchError(f"{checkpoint.name}: fine-tuning a user model needs unlabelled inputs.",
                        "Return (model, example_inputs, batches) from the --arch factory: batches is a list of input "
                        "tuples, or a function returning an iterable of them.")
    schedule = stage_schedule(recipe, stage)
    keeper = metric_keeper(schedule.keep, getattr(spec.evaluate, "rules", None), stage)
    dist = Distributed.from_environment(schedule.device)
    model = spec.build(checkpoint.state).train()
    distill = recipe.distill or DistillSection(alpha=1.0)
    if teacher is None and distill.teacher != "source":
        teacher = as_checkpoint(distill.teacher, arch=spec.arch)
    teacher_model = teacher.model().eval() if teacher is not None else copy.deepcopy(model).eval()
    weights, state = resume_weights(output, resume, recipe, model.state_dict())
    if weights is not None:
        model.load_state_dict(weights)
    hooks: list[Hook] = [lasso_hook(checkpoint, recipe)] if lasso else []
    metadata = replace(checkpoint.metadata.derived(stage, checkpoint.name, checkpoint.sha256, checkpoint.family),
                       architecture=spec.kind, recipe=recipe.to_yaml())
    if getattr(spec, "split", ()):  # how --arch rebuilds the model these tensors fit
        metadata = replace(metadata, spec={**(metadata.spec or {}), "split": list(spec.split)})
    files = None
    if output is not None:
        files = TrainingFiles(output, metadata, recipe, stage, dist, weights=lambda trained: trained.state_dict(),
                              resume=resume)
        hooks.append(files)
    if getattr(spec.evaluate, "rules", None):  # the file declared METRICS: the task's own numbers as it trains
        hooks.append(TaskMetricHook(spec.evaluate))
    hooks += [keeper] if keeper is not None else []  # after the metrics: it compares what they measured
    result = FinetuneResult(checkpoint, stage)
    hooks.append(Report(lambda event: (result.events.append(event), on_event(event))))
    task = LabelFreeTask(spec.batches, teacher_model, distill.temperature, distill.loss, distill.alpha, spec.task_loss)
    try:
        run_training(lambda: fit_task(model, task, schedule, hooks=hooks, dist=dist, state=state), files)
    finally:
        dist.close()
    model = model.cpu().eval()
    state_after = spec.canonical({k: v.detach() for k, v in model.state_dict().items()})
    result.checkpoint = Checkpoint(replace(spec, module=model), state_after, checkpoint.family, checkpoint.layout,
                                   metadata, output)
    result.written = files is not None and files.wrote
    return result
