"""``evaluate``: a language model's perplexity on a text file, word_language_model's way."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..core.architecture import language_model_facts
from ..errors import DataError
from ..io.loading import Checkpoint, as_checkpoint
from ..measure.perplexity import Perplexity, perplexity
from ..recipe import DataSection, EvaluateSection, Recipe
from .comparison import task_metrics
from .preparation import resolve_vocabulary, token_batches


def evaluate(
    source: Checkpoint | str | os.PathLike,
    data: str | os.PathLike,
    *,
    vocab: str = "auto",
    recipe: Recipe | None = None,
    settings: EvaluateSection | None = None,
    family: str | None = None,
    level: str | None = None,
    on_window: Callable[[int, int], None] | None = None,
    max_tokens: int | None = None,
) -> Perplexity:
    """Perplexity (and bits per token) of a checkpoint on a text file, word_language_model's way: the
    vocabulary by rule; words, or characters for ``level="char"`` (default: what the recipe or the
    checkpoint says, else words). ``max_tokens``: only the file's first N tokens (as ``report`` takes it)."""
    checkpoint = as_checkpoint(source, family or (recipe.model.family if recipe else None))
    if language_model_facts(checkpoint.spec) is None:  # a bare stack, an ONNX graph: no vocabulary to score
        what = "a bare recurrent stack" if checkpoint.spec.kind == "recurrent_stack" else \
            f"not a language model (an {checkpoint.spec.kind}: {checkpoint.spec.cell})"
        raise DataError(f"{checkpoint.name} is {what}; perplexity needs a language model.")
    level = level or (recipe.data.level if recipe else checkpoint.metadata.level) or "word"
    section = recipe.data if recipe else DataSection(test=Path(data), vocab=vocab, level=level)
    settings = settings or (recipe.evaluate if recipe else EvaluateSection())
    vocabulary, origin = resolve_vocabulary(checkpoint, section)
    batches = token_batches(Path(data), vocabulary, settings.batch_size, max_tokens, level=level)
    result = perplexity(checkpoint.model(), batches, settings.bptt, on_window=on_window, level=level)
    return replace(result, vocabulary=origin)


def evaluate_task(source: Checkpoint | str | os.PathLike, arch: str) -> dict[str, float]:
    """A user model's own metrics (its ``--arch`` factory's ``evaluate``) on a checkpoint: the original, or a shrunk
    one (reopened through the same factory)."""
    checkpoint = as_checkpoint(source, arch=arch)
    if getattr(checkpoint.spec, "evaluate", None) is None:
        raise DataError(f"--arch {arch}: the factory gives no evaluate function, so there is nothing to measure.",
                        "Return (model, example_inputs, batches, evaluate) from the factory, where evaluate(model) "
                        "returns {metric name: value}.")
    measured = task_metrics(checkpoint, None, checkpoint.model(), None)
    return {name: before for name, (before, _) in measured.items()}
