"""``run``: the whole recipe in one call: fine-tune with ISS, shrink, recover, report."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, Interrupted
from ..io.files import atomic_write
from ..io.loading import as_checkpoint
from ..recipe import Recipe, load_recipe
from ..training.hooks import Event
from .finetune import finetune
from .report import Report, report, report_markdown
from .shrink import ShrinkResult, shrink

OUTPUTS = ("finetuned.safetensors", "shrunk.safetensors", "recovered.safetensors", "report.json", "report.md")


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
    speed_repeats: int = 5,
    on_event: Callable[[Event], None] = lambda event: None,
    on_stage: Callable[[str], None] = lambda stage: None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> RunResult:
    """Fine-tune ``source`` with ISS, shrink, recover (when the recipe has ``recover``), and report
    against ``source``; every file goes into ``folder``."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"The output {folder} is a file; run writes a folder of results.",
                              "Give a folder path (new or existing), e.g. -o runs/first.")
    existing = [name for name in OUTPUTS if (folder / name).exists()]
    if existing and not force:
        raise CheckpointError(f"{folder} already holds {', '.join(existing)}.",
                              "Choose another folder, or pass --force to overwrite.")
    created = _FolderLedger(folder)
    try:
        return _run(source, recipe, folder, speed_repeats, on_event, on_stage, on_progress)
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


def _run(source, recipe: Recipe, folder: Path, speed_repeats: int, on_event, on_stage, on_progress) -> RunResult:
    finetuned, shrunk, recovered = (folder / name for name in OUTPUTS[:3])
    original = as_checkpoint(source, recipe.model.family)  # read, recognised and hashed once
    on_stage("finetune")
    current = finetune(original, recipe, finetuned, stage="finetune", force=True, on_event=on_event).checkpoint
    on_stage("shrink")
    shrunk_result = shrink(current, shrunk, recipe.shrink.threshold, force=True)
    current = shrunk_result.checkpoint
    if recipe.recover is not None:
        on_stage("recover")
        teacher = original if recipe.distill is not None and recipe.distill.teacher == "source" else None
        current = finetune(current, recipe, recovered, stage="recover", force=True, on_event=on_event,
                           teacher=teacher).checkpoint
    on_stage("report")
    data = recipe.data.test or recipe.data.valid
    result = report(original, current, data=data, vocab_source=recipe.data, evaluate=recipe.evaluate,
                    max_tokens=recipe.data.max_eval_tokens, repeats=speed_repeats, on_progress=on_progress)
    text = {"report.json": json.dumps(result.to_dict(), indent=2) + "\n", "report.md": report_markdown(result)}
    for name, content in text.items():
        atomic_write(folder / name, lambda temporary, content=content: temporary.write_text(content, encoding="utf-8"))
    return RunResult(folder, shrunk_result, current.path, result)
