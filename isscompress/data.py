"""Text corpora the way pytorch/examples' word_language_model reads them.

One sentence per line, whitespace tokens, ``<eos>`` after every line. The vocabulary is
either a file (one word per line, line i = id i) or rebuilt from the corpus in first-seen
order over train, valid, test, exactly as ``data.Corpus`` does, so its checkpoints
evaluate with the ids they were trained with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from .errors import DataError
from .json_text import parse_json

EOS = "<eos>"
UNK = "<unk>"


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]

    @cached_property
    def index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def save(self, path: Path) -> None:
        path.write_text("".join(f"{word}\n" for word in self.words), encoding="utf-8")


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, in a few words (None when it can)."""
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is a folder, not a file" if path.is_dir() else "is not a regular file (a device, pipe or socket)"
    if not os.access(path, os.R_OK):
        return "is not readable (permissions)"
    return None


def _text(path: Path) -> str:
    if (problem := file_problem(path)) is not None:
        raise DataError(f"Text file {path} {problem}.", "Check the data paths in the recipe or on the command line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start} cannot be decoded).",
                        "Convert it to UTF-8, e.g. with iconv.") from None
    if not text.split():
        raise DataError(f"{path} contains no words.", "Point to a non-empty text file, one sentence per line.")
    return text


def _lines(path: Path) -> list[str]:
    return _text(path).splitlines()  # also accepts CRLF line endings


def _tokens(path: Path, level: str) -> Iterator[str]:
    """Words with ``<eos>`` after every line (word level), or every character, newlines included (char level)."""
    if level == "char":
        yield from _text(path)
        return
    for line in _lines(path):
        yield from line.split() + [EOS]


def read_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """A vocabulary file: one word per line (line i is token id i), or a JSON list of tokens, which can hold
    any character (a space, a newline) for a character-level model."""
    path = Path(path)
    text = _text(path)
    if text.lstrip().startswith("["):
        listed = parse_json(text, f"Vocabulary {path} starts like a JSON list but", DataError,
                            "Write a JSON list of strings, or one word per line.")
        words = tuple(listed) if isinstance(listed, list) else ()
        if not isinstance(listed, list) or not all(isinstance(word, str) for word in words):
            raise DataError(f"Vocabulary {path}: every entry of the JSON list must be a string.")
    else:
        words = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(set(words)) != len(words):
        raise DataError(f"Vocabulary {path} lists some words twice.", "Keep one line per word.")
    return Vocabulary(words)


def build_vocabulary(paths: Sequence[str | os.PathLike], level: str = "word") -> Vocabulary:
    """Word level: first-seen order over the files, ``<eos>`` after each line (pytorch/examples' data.Corpus).
    Char level: the sorted set of characters (char-rnn's order)."""
    seen: dict[str, None] = {}
    for path in paths:
        for token in _tokens(Path(path), level):
            seen.setdefault(token, None)
    return Vocabulary(tuple(sorted(seen)) if level == "char" else tuple(seen))


def tokenize(path: str | os.PathLike, vocabulary: Vocabulary, level: str = "word") -> Tensor:
    """Token ids of a text file; tokens outside the vocabulary become ``<unk>`` when it has one."""
    path = Path(path)
    index = vocabulary.index
    unk = index.get(UNK)
    ids: list[int] = []
    missing: dict[str, None] = {}
    for word in _tokens(path, level):
        token = index.get(word, unk)
        if token is None:
            missing.setdefault(word, None)
        else:
            ids.append(token)
    if missing:
        shown = ", ".join(repr(w) for w in list(missing)[:5])
        raise DataError(
            f"{path}: {len(missing)} word(s) are not in the vocabulary, which has no {UNK} to fall back on ({shown}).",
            f"Use the vocabulary the model was trained with, or add {UNK} to it.",
        )
    return torch.tensor(ids, dtype=torch.long)


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """``[steps, batch]``: the stream cut into ``batch_size`` columns, remainder dropped."""
    steps = ids.numel() // batch_size
    if steps < 2:
        raise DataError(f"Only {ids.numel()} tokens for batch size {batch_size}.", "Use more text or a smaller batch.")
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_windows(batched: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``(inputs, targets)`` windows of up to ``bptt`` steps, targets shifted by one."""
    for start in range(0, batched.size(0) - 1, bptt):
        length = min(bptt, batched.size(0) - 1 - start)
        yield batched[start : start + length], batched[start + 1 : start + 1 + length]


def window_count(batched: Tensor, bptt: int) -> int:
    return (batched.size(0) - 1 + bptt - 1) // bptt


@dataclass(frozen=True)
class Corpus:
    """Token ids of the splits that exist (train may be absent for evaluation-only use)."""

    vocabulary: Vocabulary
    train: Tensor | None = None
    valid: Tensor | None = None
    test: Tensor | None = None


def load_corpus(
    vocabulary: Vocabulary, train: Path | None = None, valid: Path | None = None, test: Path | None = None
) -> Corpus:
    return Corpus(
        vocabulary,
        *(tokenize(path, vocabulary) if path is not None else None for path in (train, valid, test)),
    )
