"""``run``: the whole recipe in one call: fine-tune with ISS, shrink, recover, report."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError
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
    folder.mkdir(parents=True, exist_ok=True)
    existing = [name for name in OUTPUTS if (folder / name).exists()]
    if existing and not force:
        raise CheckpointError(f"{folder} already holds {', '.join(existing)}.",
                              "Choose another folder, or pass --force to overwrite.")
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
    (folder / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(report_markdown(result), encoding="utf-8")
    return RunResult(folder, shrunk_result, current.path, result)
