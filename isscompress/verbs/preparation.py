"""What a pipeline needs before any work: the vocabulary for a checkpoint, and its token streams."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ..data import Vocabulary, batchify, build_vocabulary, read_vocabulary, tokenize
from ..errors import DataError
from ..core.architecture import language_model_facts
from ..io.loading import Checkpoint
from ..recipe import DataSection, Recipe, Schedule

VOCAB_FILES = ("vocab.txt",)


def _beside(checkpoint: Checkpoint) -> Path | None:
    if checkpoint.path is None:
        return None
    for candidate in (checkpoint.path.with_suffix(".vocab.txt"), *(checkpoint.path.parent / n for n in VOCAB_FILES)):
        if candidate.is_file():
            return candidate
    return None


def _carried(checkpoint: Checkpoint) -> tuple[Vocabulary, str] | None:
    """The vocabulary stored with a checkpoint, else a vocabulary file beside it; and where it came from."""
    if checkpoint.metadata.vocabulary:
        return Vocabulary(tuple(checkpoint.metadata.vocabulary)), f"stored in {checkpoint.name}"
    beside = _beside(checkpoint)
    return (read_vocabulary(beside), str(beside)) if beside is not None else None


def vocabulary_of(checkpoint: Checkpoint) -> tuple[str, ...] | None:
    """The words a checkpoint carries: stored in its metadata, else a vocabulary file beside it that fits its
    embedding (so that a file made from it can carry them on); None when there is neither."""
    facts = language_model_facts(checkpoint.spec)
    if checkpoint.metadata.vocabulary or not facts:
        return checkpoint.metadata.vocabulary
    try:
        carried = _carried(checkpoint)
    except DataError:
        return None
    return carried[0].words if carried and len(carried[0]) == facts.vocab_size else None


SPLITS = ("train", "valid", "test")  # pytorch/examples' Corpus reads them in this order to number the words


def corpus_files(paths: list[Path]) -> list[Path]:
    """The files a word_language_model vocabulary is built from. A recipe names train, valid and test; a single
    file named for one split (``test.txt``, ``ptb.test.txt``) stands for its corpus: its existing sibling splits, in
    pytorch/examples' order (train, valid, test), so that words are numbered as the model was trained."""
    if len(paths) != 1:
        return paths
    path = paths[0]
    for split in SPLITS:
        if split in path.name:
            siblings = [path.with_name(path.name.replace(split, other)) for other in SPLITS]
            found = [p for p in siblings if p.is_file()]
            return found if path in found else paths
    return paths


def resolve_vocabulary(checkpoint: Checkpoint, data: DataSection) -> tuple[Vocabulary, str]:
    """The vocabulary by the recipe's rule, checked against the model's embedding; and where it came from."""
    rule = data.vocab
    if rule == "auto" and (carried := _carried(checkpoint)) is not None:
        vocabulary, origin = carried
    elif rule in ("auto", "corpus"):
        paths = corpus_files([p for p in (data.train, data.valid, data.test) if p is not None])
        if not paths:
            raise DataError("No vocabulary is stored with the checkpoint and no text is given to rebuild it from.",
                            "Give data.vocab (a file, one word per line) or the data paths.")
        vocabulary, origin = build_vocabulary(paths, data.level), "rebuilt from " + ", ".join(p.name for p in paths)
    else:
        vocabulary, origin = read_vocabulary(rule), rule
    size = checkpoint.spec.vocab_size
    if getattr(checkpoint.spec, "classes", 0):
        raise DataError(f"{checkpoint.name} labels each of its {size} tokens with one of {checkpoint.spec.classes} "
                        "classes (a tagger), so perplexity and language-model fine-tuning do not apply to it.",
                        "Fine-tune and measure it on its own task with --arch FILE.py:FACTORY (docs/any-model.md), "
                        "as examples/real/shakkala does; inspect and shrink take it as it is.")
    if size and len(vocabulary) != size:
        raise DataError(
            f"The vocabulary ({origin}) has {len(vocabulary)} words but {checkpoint.name}'s embedding has {size} rows.",
            "Use the vocabulary the model was trained with (data.vocab), e.g. the vocab.txt saved beside it.",
        )
    return vocabulary, origin


def token_batches(path: Path, vocabulary: Vocabulary, batch_size: int, max_tokens: int | None = None,
                  level: str = "word") -> Tensor:
    """``[steps, batch]`` token ids of a text file, optionally only its first ``max_tokens``."""
    ids = tokenize(path, vocabulary, level)
    return batchify(ids[:max_tokens] if max_tokens else ids, batch_size)


def training_batches(recipe: Recipe, vocabulary: Vocabulary, schedule: Schedule) -> tuple[Tensor, Tensor | None]:
    """The training stream batched for ``schedule``, and the validation stream batched for evaluation."""
    data = recipe.data
    if data.train is None:
        raise DataError("The recipe has no data.train text to train on.", "Add data.train to the recipe.")
    train = token_batches(data.train, vocabulary, schedule.batch_size, data.max_train_tokens, data.level)
    valid = None
    if data.valid is not None:
        valid = token_batches(data.valid, vocabulary, recipe.evaluate.batch_size, data.max_eval_tokens, data.level)
    return train, valid
