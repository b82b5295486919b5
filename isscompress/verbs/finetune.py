"""``finetune``: ISS group-Lasso fine-tuning (or, without ISS, recovery fine-tuning) from a recipe."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..io.files import FORMAT_VERSION, atomic_write, check_output_path, sha256_file, write_checkpoint
from ..train.distributed import Distributed
from ..errors import CheckpointError
from ..io.loading import Checkpoint, derived_metadata, load_checkpoint
from ..data import build_vocabulary, read_vocabulary
from ..architectures.stack_module import RecurrentModel, build_model
from ..architectures.stack import ModelSpec
from .preparation import resolve_vocabulary, training_batches
from ..recipe import Recipe, Schedule, check_layer_names, load_recipe
from ..train.loop import Event, TrainState, fit

STAGES = ("finetune", "recover")


@dataclass
class FinetuneResult:
    output: Path
    stage: str
    events: list[Event] = field(default_factory=list)

    @property
    def epochs(self) -> list[Event]:
        return [e for e in self.events if e["event"] == "epoch"]

    def to_dict(self) -> dict:
        return {"output": str(self.output), "stage": self.stage, "epochs": self.epochs}


def side_files(output: Path) -> tuple[Path, Path]:
    """The training-state file (for --resume) and the JSON-lines log written beside an output."""
    return output.with_name(output.name + ".train-state.pt"), output.with_name(output.name + ".log.jsonl")


def _schedule(recipe: Recipe, stage: str) -> Schedule:
    if stage == "recover":
        return recipe.recover or recipe.finetune
    return recipe.finetune


def _metadata(checkpoint: Checkpoint, recipe: Recipe, stage: str, vocabulary, source_sha: str) -> dict[str, Any]:
    return {
        **derived_metadata(checkpoint, stage, source_sha),
        "format_version": FORMAT_VERSION,
        "spec": checkpoint.spec.to_dict(),
        "stage": stage,
        "recipe": recipe.to_yaml(),
        "vocabulary": list(vocabulary.words),
    }


def _resume_state(state_file: Path, recipe: Recipe) -> tuple[dict, TrainState]:
    """Weights and training state from the last save (one file, written atomically)."""
    if not state_file.is_file():
        raise CheckpointError(f"Nothing to resume: {state_file} is missing.",
                              "Run without --resume to start the fine-tuning.")
    try:
        saved = torch.load(state_file, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{state_file} could not be read ({err}).", "Start again without --resume.") from None
    if saved.pop("recipe", None) != recipe.to_yaml():
        raise CheckpointError(f"{state_file} was made with a different recipe.",
                              "Resume with the same recipe, or start again without --resume.")
    weights = saved.pop("model")
    return weights, TrainState(**saved)


def finetune(
    source: str | os.PathLike,
    recipe: Recipe | str | os.PathLike,
    output: str | os.PathLike,
    *,
    stage: str = "finetune",
    resume: bool = False,
    force: bool = False,
    on_event: Callable[[Event], None] = lambda event: None,
) -> FinetuneResult:
    """Fine-tune ``source`` with the recipe's ISS section (``stage="finetune"``) or without ISS
    (``stage="recover"``, or a recipe with no ``iss``), writing ``output`` atomically at every save."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    source, output = Path(source), Path(output)
    state_file, log_file = side_files(output)
    if not resume:
        check_output_path(output, force=force, inputs=(source,))
    checkpoint = load_checkpoint(source, recipe.model.family)
    if stage == "finetune":  # the ISS section applies to this stage only (recovery runs on the shrunk model)
        check_layer_names(recipe, {gs.name: gs.size for gs in checkpoint.group_sets}, "")
    vocabulary, _ = resolve_vocabulary(checkpoint, recipe.data)
    schedule = _schedule(recipe, stage)
    train, valid = training_batches(recipe, vocabulary, schedule)
    source_sha = sha256_file(checkpoint.path)
    metadata = _metadata(checkpoint, recipe, stage, vocabulary, source_sha)

    state = None
    if not resume:
        log_file.unlink(missing_ok=True)
    if resume:
        checkpoint.state, state = _resume_state(state_file, recipe)
    model = build_model(checkpoint.spec, {k: v.float().clone() for k, v in checkpoint.state.items()},
                        dropout=schedule.dropout)
    iss = recipe.iss if stage == "finetune" else None
    dist = Distributed.from_environment(schedule.device)
    result = FinetuneResult(output, stage)

    def save(trained: RecurrentModel, train_state: TrainState) -> None:
        # The state file alone is enough to resume (weights included), so a kill between the two
        # writes never pairs weights with the wrong position.
        weights = trained.canonical_state()
        resume_data = {**train_state.to_dict(), "model": weights, "recipe": recipe.to_yaml()}
        atomic_write(state_file, lambda tmp: torch.save(resume_data, tmp))
        write_checkpoint(output, weights, metadata)

    def record(event: Event) -> None:
        result.events.append(event)
        if dist.is_main:
            with open(log_file, "a", encoding="utf-8") as log:
                log.write(json.dumps({"stage": stage, **event}) + "\n")
        on_event(event)

    try:
        fit(model, train, valid, schedule, group_sets=checkpoint.group_sets, iss=iss,
            alive_threshold=recipe.shrink.threshold, dist=dist, state=state, on_event=record, save=save,
            eval_bptt=recipe.evaluate.bptt)
    finally:
        dist.close()
    return result


def train_new(
    spec: ModelSpec,
    recipe: Recipe | str | os.PathLike,
    output: str | os.PathLike,
    *,
    force: bool = False,
    on_event: Callable[[Event], None] = lambda event: None,
) -> FinetuneResult:
    """Train a new language model of ``spec`` from scratch with the recipe's ``finetune`` schedule
    (no ISS): a baseline to compress, or the "direct design" of given widths to compare ISS with."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    output = check_output_path(output, force=force)
    paths = [p for p in (recipe.data.train, recipe.data.valid, recipe.data.test) if p is not None]
    vocab = recipe.data.vocab
    vocabulary = build_vocabulary(paths) if vocab in ("auto", "corpus") else read_vocabulary(vocab)
    spec = replace(spec, vocab_size=len(vocabulary))
    torch.manual_seed(recipe.finetune.seed)
    model = RecurrentModel(spec, dropout=recipe.finetune.dropout)
    with torch.no_grad():  # word_language_model's init_weights
        model.encoder.weight.uniform_(-0.1, 0.1)
        if not spec.tied:
            model.decoder.weight.uniform_(-0.1, 0.1)
        if model.decoder.bias is not None:
            model.decoder.bias.zero_()
    schedule = recipe.finetune
    train, valid = training_batches(recipe, vocabulary, schedule)
    metadata = {"format_version": FORMAT_VERSION, "family": "isscompress", "spec": spec.to_dict(), "stage": "train",
                "recipe": recipe.to_yaml(), "vocabulary": list(vocabulary.words)}
    result = FinetuneResult(output, "train")

    def record(event: Event) -> None:
        result.events.append(event)
        on_event(event)

    fit(model, train, valid, schedule, dist=Distributed.from_environment(schedule.device), on_event=record,
        save=lambda trained, state: write_checkpoint(output, trained.canonical_state(), metadata),
        eval_bptt=recipe.evaluate.bptt)
    return result
