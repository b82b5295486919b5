"""``run``: the whole recipe in one call: fine-tune with ISS, shrink, recover, report."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, Interrupted
from ..outputs import atomic_write
from ..io.loading import Checkpoint, as_checkpoint
from ..json_text import finite_json, parse_json
from ..recipe import Recipe, load_recipe
from ..training.hooks import Event
from .finetune import finetune, side_files
from .report import Report, report, report_markdown
from .shrink import ShrinkResult, shrink

OUTPUTS = ("finetuned.safetensors", "shrunk.safetensors", "recovered.safetensors", "report.json", "report.md")
RUN_STATE = "run-state.json"  # the stages that finished, so that --resume knows where to continue
TRAINING_STAGES = ("finetune", "recover")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class RunResult:
    folder: Path
    shrink: ShrinkResult
    final: Path
    report: Report


def run(
    source: str | os.PathLike,
    recipe: Recipe | str | os.PathLike,
    folder: str | os.PathLike,
    *,
    force: bool = False,
    resume: bool = False,
    speed_repeats: int = 5,
    on_event: Callable[[Event], None] = lambda event: None,
    on_stage: Callable[[str], None] = lambda stage: None,
    on_progress: Callable[[str, int, int], None] | None = None,
    arch: str | None = None,
) -> RunResult:
    """Fine-tune ``source`` with ISS, shrink, recover (when the recipe has ``recover``), and report
    against ``source``; every file goes into ``folder``. ``resume`` continues an interrupted run in ``folder``:
    finished training stages are read back, an interrupted one continues from its saved state. ``arch``
    (FILE.py:FACTORY) runs the whole recipe for a user's own model, label-free on the factory's batches."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"The output {folder} is a file; run writes a folder of results.",
                              "Give a folder path (new or existing), e.g. -o runs/first.")
    existing = [name for name in OUTPUTS if (folder / name).exists()]
    if existing and not force and not resume:
        raise CheckpointError(f"{folder} already holds {', '.join(existing)}.",
                              "Continue an interrupted run with --resume, choose another folder, or pass --force to "
                              "start again.")
    ledger = RunLedger.read(folder, recipe) if resume else None
    created = _FolderLedger(folder)
    try:
        return _run(source, recipe, folder, ledger, speed_repeats, on_event, on_stage, on_progress, arch)
    except Interrupted:
        raise  # what was saved is the point of an interruption
    except BaseException:
        created.undo()
        raise


class _FolderLedger:
    """What a run adds to its folder, so that a failed run removes it (and the folder, if the run made it)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.made = folder, not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(f"Cannot create the output folder {folder}: {err.strerror or err}.",
                                  "Choose a folder you can write to.") from None
        self.before = set(folder.iterdir())

    def undo(self) -> None:
        for path in set(self.folder.iterdir()) - self.before:
            if path.is_file():
                path.unlink(missing_ok=True)
        if self.made and not any(self.folder.iterdir()):
            self.folder.rmdir()


@dataclass
class RunLedger:
    """``run-state.json``: which training stages of a run finished, for the recipe and source it ran with."""

    folder: Path
    recipe: str
    source_sha256: str  # checked on --resume: a run continues only from the checkpoint it started with
    done: list[str]
    resuming: bool = False  # read back from an interrupted run (its interrupted stage continues from its state)

    @classmethod
    def read(cls, folder: Path, recipe: Recipe) -> "RunLedger":
        path = folder / RUN_STATE
        if not path.is_file():
            raise CheckpointError(f"Nothing to resume in {folder}: it has no {RUN_STATE} (the run did not start, or "
                                  "was made by another version).", "Run without --resume (with --force to start again).")
        data = parse_json(path.read_bytes(), str(path), CheckpointError, "Start again with --force.")
        if not isinstance(data, dict) or set(data) != {"recipe", "source_sha256", "done"}:
            raise CheckpointError(f"{path} is not the record of a run (it must hold recipe, source_sha256 and done).",
                                  "Start again with --force.")
        recipe_text, source, done = data["recipe"], data["source_sha256"], data["done"]
        if not isinstance(recipe_text, str) or not (isinstance(source, str) and SHA256.fullmatch(source)) or not (
                isinstance(done, list) and all(stage in TRAINING_STAGES for stage in done)):
            raise CheckpointError(f"{path} is damaged: recipe must be text, source_sha256 the source's sha256 "
                                  f"(64 hex digits), done a list of stages from {list(TRAINING_STAGES)}.",
                                  "Start again with --force.")
        ledger = cls(folder, recipe_text, source, list(done), resuming=True)
        if ledger.recipe != recipe.to_yaml():
            raise CheckpointError(f"The run in {folder} was made with a different recipe.",
                                  "Resume with the same recipe, or start again with --force.")
        return ledger

    def check_source(self, checkpoint: Checkpoint) -> None:
        if checkpoint.sha256 != self.source_sha256:
            raise CheckpointError(f"The run in {self.folder} was made from another source checkpoint (sha256 "
                                  f"{self.source_sha256[:12]}…).", "Resume with the same checkpoint, or start again "
                                  "with --force.")

    def finished(self, stage: str | None = None) -> None:
        """Record ``stage`` as finished (None: only write the record, at the start of a run)."""
        self.done += [stage] if stage else []
        text = json.dumps({"recipe": self.recipe, "source_sha256": self.source_sha256, "done": self.done}, indent=1)
        atomic_write(self.folder / RUN_STATE, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def _stage(ledger: RunLedger, stage: str, output: Path, train: Callable[[bool], Checkpoint],
           arch: str | None = None) -> Checkpoint:
    """A training stage: read back when it finished, continued when it was interrupted after a save, else run."""
    if stage in ledger.done:
        return as_checkpoint(output, arch=arch)
    current = train(ledger.resuming and side_files(output)[0].is_file())
    ledger.finished(stage)
    return current


def _run(source, recipe: Recipe, folder: Path, resumed: RunLedger | None, speed_repeats: int, on_event, on_stage,
         on_progress, arch: str | None) -> RunResult:
    finetuned, shrunk, recovered = (folder / name for name in OUTPUTS[:3])
    original = as_checkpoint(source, recipe.model.family if arch is None else None, arch)  # read and hashed once
    if resumed is not None:
        resumed.check_source(original)
    ledger = resumed or RunLedger(folder, recipe.to_yaml(), original.sha256, [])
    ledger.finished()
    on_stage("finetune")
    current = _stage(ledger, "finetune", finetuned, lambda resume: finetune(
        original, recipe, finetuned, stage="finetune", force=True, resume=resume, on_event=on_event).checkpoint,
        arch)
    on_stage("shrink")
    shrunk_result = shrink(current, shrunk, recipe.shrink.threshold, force=True, widths=recipe.widths)  # cheap: redone
    current = shrunk_result.checkpoint
    if recipe.recover is not None:
        on_stage("recover")
        teacher = original if recipe.distill is not None and recipe.distill.teacher == "source" else None
        current = _stage(ledger, "recover", recovered, lambda resume: finetune(
            current, recipe, recovered, stage="recover", force=True, resume=resume, on_event=on_event,
            teacher=teacher).checkpoint, arch)
    on_stage("report")
    data = recipe.data.test or recipe.data.valid
    result = report(original, current, data=data, vocab_source=recipe.data, evaluate=recipe.evaluate,
                    max_tokens=recipe.data.max_eval_tokens, repeats=speed_repeats, on_progress=on_progress)
    text = {"report.json": finite_json(result.to_dict(), indent=2) + "\n", "report.md": report_markdown(result)}
    for name, content in text.items():
        atomic_write(folder / name, lambda temporary, content=content: temporary.write_text(content, encoding="utf-8"))
    return RunResult(folder, shrunk_result, current.path, result)
