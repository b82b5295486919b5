"""textgenrnn 2.0.0 (pip), its shipped character model rebuilt for ``isscompress --arch textgen.py:make``.

The package ships ``textgenrnn_weights.hdf5`` (Keras ``save_weights``: arrays only) and ``textgenrnn_vocab.json``:
a 100-wide character embedding, two CuDNN LSTMs of 128 units, and an attention-weighted average over the time steps
of all three sequences concatenated (356 features: embedding, layer 1, layer 2) feeding a softmax over 465 classes
(index 0 is padding and unknown characters). It predicts the next character from the previous 40, left-padded.

isscompress reads the weights-only file itself (CuDNN layers compute fixed equations); this module rebuilds the
architecture with the file's layer names, and measures the task: bits per character on Tiny Shakespeare's held-out
last 10% (``../shared/data/tinyshakespeare``; set ``TINY_SHAKESPEARE`` to the file elsewhere).
"""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
WINDOW = 40


class AttentionWeightedAverage(nn.Module):
    """One weight per feature scores each time step; the steps are averaged with the softmax of the scores."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.attention_W = nn.Parameter(torch.zeros(features, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax((x @ self.attention_W).squeeze(-1), dim=1)
        return (x * weights.unsqueeze(-1)).sum(dim=1)


class TextGenRNN(nn.Module):
    def __init__(self, classes: int = 465, embedding: int = 100, hidden: int = 128) -> None:
        super().__init__()
        self.embedding = nn.Embedding(classes, embedding)
        self.rnn_1 = nn.LSTM(embedding, hidden, batch_first=True)
        self.rnn_2 = nn.LSTM(hidden, hidden, batch_first=True)
        self.attention = AttentionWeightedAverage(embedding + 2 * hidden)
        self.output = nn.Linear(embedding + 2 * hidden, classes)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(chars)
        first, _ = self.rnn_1(embedded)
        second, _ = self.rnn_2(first)
        return self.output(self.attention(torch.cat([embedded, first, second], dim=-1)))  # next-character logits


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    return json.loads((HERE / "model" / "textgenrnn_vocab.json").read_text(encoding="utf-8"))


def shakespeare() -> str:
    default = HERE.parents[2].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    return Path(os.environ.get("TINY_SHAKESPEARE", default)).read_text(encoding="utf-8")


@lru_cache(maxsize=2)
def windows(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(previous 40 characters [count, 40], the next character [count]) at evenly spaced positions of the first 90%
    ("train") or the last 10% ("valid") of the text."""
    text = shakespeare()
    cut = int(len(text) * 0.9)
    part = text[:cut] if split == "train" else text[cut:]
    ids = torch.tensor([vocabulary().get(c, 0) for c in part])
    positions = torch.linspace(WINDOW, len(part) - 1, count).long()
    return torch.stack([ids[p - WINDOW:p] for p in positions]), ids[positions]


def bits_per_character(model: nn.Module, chars: torch.Tensor, targets: torch.Tensor, batch: int = 500) -> float:
    with torch.no_grad():
        loss = sum(float(nn.functional.cross_entropy(model(chars[i:i + batch]), targets[i:i + batch], reduction="sum"))
                   for i in range(0, len(chars), batch))
    return loss / len(chars) / math.log(2)


def evaluate(model: nn.Module) -> dict[str, float]:
    """Bits per character on 4,000 held-out positions, and on each half (alternate positions: the noise)."""
    chars, targets = windows("valid", 4000)
    return {"bits per character": bits_per_character(model, chars, targets),
            "bits per character (half A)": bits_per_character(model, chars[0::2], targets[0::2]),
            "bits per character (half B)": bits_per_character(model, chars[1::2], targets[1::2])}


def make():
    """(model, example inputs, unlabelled batches, evaluate) for isscompress --arch."""
    chars, _ = windows("train", 8000)  # the next characters are not used: the original teaches the compressed model

    def batches():
        order = torch.randperm(len(chars), generator=torch.Generator().manual_seed(0))
        return [(chars[order[i:i + 32]],) for i in range(0, len(chars) - 31, 32)]

    return TextGenRNN(len(vocabulary()) + 1).eval(), (chars[:8],), batches, evaluate
