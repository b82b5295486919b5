"""The label-free stage of ``finetune``: what a user's own model brings to :func:`.stage.run_stage` (its teacher,
its batches, its file's state dict, its task metrics); resume, files, hooks and stop signals are the stage's. Every recipe field either applies to a user model or is refused with the reason; none is ignored."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from ..architectures.onnx_torch import OnnxModule
from ..errors import RecipeError, ShrinkError
from ..io.files import write_checkpoint
from ..io.loading import Checkpoint, as_checkpoint, is_onnx
from ..io.metadata import Metadata
from ..io.onnx_models import write_module
from ..io.user_models import ArchError
from ..recipe import DistillSection, Recipe
from ..training.hooks import TaskMetricHook
from ..training.keep_best import metric_keeper
from ..training.loop import fit_task
from ..training.tasks import LabelFreeTask
from .stage import StageParts, stage_schedule

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


def label_free_parts(checkpoint: Checkpoint, recipe: Recipe, stage: str, teacher: Checkpoint | None) -> StageParts:
    """A user's model learning its original's outputs on the factory's unlabelled batches: with the recipe's
    ``iss`` section (``stage="finetune"``) or without it (``"recover"``, the ``recover`` schedule). The teacher is
    the model as read, or ``distill.teacher`` (a checkpoint of the same model, opened with the same factory: the
    dense original teaching a shrunk model's recovery), or ``teacher``."""
    if stage == "finetune" and recipe.iss is None:
        raise RecipeError("The recipe has no iss section, so fine-tuning would not remove anything.",
                          "Add iss: {target: {macs: 0.5}}.")
    spec = checkpoint.spec
    _refuse_inapplicable(recipe, stage, getattr(spec, "task_loss", None))
    if getattr(spec, "batches", None) is None:
        raise ArchError(f"{checkpoint.name}: fine-tuning a user model needs unlabelled inputs.",
                        "Return (model, example_inputs, batches) from the --arch factory: batches is a list of input "
                        "tuples, or a function returning an iterable of them.")
    schedule = stage_schedule(recipe, stage)
    model = spec.build(checkpoint.state).train()
    distill = recipe.distill or DistillSection(alpha=1.0)
    if teacher is None and distill.teacher != "source":
        teacher = as_checkpoint(distill.teacher, arch=spec.arch)
    teacher_model = teacher.model().eval() if teacher is not None else copy.deepcopy(model).eval()
    metadata = replace(checkpoint.metadata.derived(stage, checkpoint.name, checkpoint.sha256, checkpoint.family),
                       architecture=spec.kind, recipe=recipe.to_yaml())
    if getattr(spec, "split", ()):  # how --arch rebuilds the model these tensors fit
        metadata = replace(metadata, spec={**(metadata.spec or {}), "split": list(spec.split)})
    task = LabelFreeTask(spec.batches, teacher_model, distill.temperature, distill.loss, distill.alpha, spec.task_loss)

    def finish(trained: nn.Module, output: Path | None) -> Checkpoint:
        trained = trained.cpu().eval()
        state = spec.canonical({k: v.detach() for k, v in trained.state_dict().items()})
        return Checkpoint(replace(spec, module=trained), state, checkpoint.family, checkpoint.layout, metadata, output)

    rules = getattr(spec.evaluate, "rules", None)  # the file declared METRICS: the task's own numbers as it trains
    return StageParts(model, lambda trained: trained.state_dict(),
                      lambda trained, hooks, dist, state: fit_task(trained, task, schedule, hooks=hooks, dist=dist,
                                                                   state=state),
                      finish, metadata, hooks=[TaskMetricHook(spec.evaluate)] if rules else [],
                      keeper=metric_keeper(schedule.keep, rules, stage), write=_writer(checkpoint, model))


def _writer(checkpoint: Checkpoint, model: nn.Module) -> Callable[[Path, dict[str, Tensor], Metadata], None]:
    """How a save writes the model: an ONNX graph's module back into its graph (.onnx), anything else safetensors."""
    if not is_onnx(checkpoint.path or ""):
        return write_checkpoint
    if not isinstance(model, OnnxModule):
        raise ArchError(f"{checkpoint.name} is an ONNX graph, but the --arch factory's model is a "
                        f"{type(model).__name__}, whose weights cannot be written back into the graph.",
                        "Return isscompress.onnx_module(the .onnx file) as the factory's model.")
    return lambda output, weights, metadata: write_module(output, model, weights, metadata)  # its graph, these weights
