"""g2pM 0.1.2.5 (pip), its shipped Mandarin polyphone model rebuilt for ``isscompress --arch polyphone.py:make``.

The package ships ``np_ckpt.pkl`` (a pickled dict of numpy arrays in PyTorch's naming, which its numpy code runs):
a 5,398 x 64 character embedding, a bidirectional LSTM of 32 units per direction, and a 64 -> 32 -> 876 MLP giving
the pinyin (with tone) of a polyphonic character from its context, between begin and end markers. This module
rebuilds it in PyTorch and measures the task with labels from another package: pypinyin's phrase dictionary
(``pip download pypinyin``, ``phrases_dict.json``) gives the reading of every character of 47,000 phrases. The
test set is every polyphonic character (more than one reading in g2pM's own dictionary, the sandhi characters 一 and
不 left out) of every 5th phrase whose labelled reading is one of the character's readings; the other phrases are
fine-tuning input (unlabelled).
"""

from __future__ import annotations

import json
import pickle
import unicodedata
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model"
SANDHI = {"一", "不"}  # their tone follows the next syllable (yí bù): tone sandhi, not a choice between readings


class PolyphoneBiLSTM(nn.Module):
    def __init__(self, vocab: int = 5398, embedding: int = 64, hidden: int = 32, mlp: int = 32,
                 classes: int = 876) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, bidirectional=True, batch_first=True)
        self.logit_layer = nn.Sequential(nn.Linear(2 * hidden, mlp), nn.ReLU(), nn.Linear(mlp, classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Character ids [B, T] (markers included, no padding) -> reading logits at every position [B, T, 876]."""
        out, _ = self.lstm(self.embedding(ids))
        return self.logit_layer(out)


@lru_cache(maxsize=1)
def tables() -> tuple[dict, dict, dict]:
    def load(name: str):
        with (MODEL / name).open("rb") as handle:
            return pickle.load(handle)  # the package's own dictionaries (str -> int / list of str)

    return load("char2idx.pkl"), load("class2idx.pkl"), load("digest_cedict.pkl")


def tone3(syllable: str) -> str:
    """pypinyin's marked syllable (``zhōng``, ``lǜ``) in g2pM's classes (``zhong1``, ``lu:4``; neutral tone 5)."""
    tone, plain = 5, []
    for char in unicodedata.normalize("NFD", syllable):
        mark = {"\u0304": 1, "\u0301": 2, "\u030c": 3, "\u0300": 4}.get(char)
        if mark:
            tone = mark
        elif char == "\u0308":
            plain.append(":")  # ü -> u:
        else:
            plain.append(char)
    return "".join(plain) + str(tone)


@lru_cache(maxsize=2)
def phrases(split: str) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids with markers, [(position, reading class)] of its polyphonic characters) per phrase of the split."""
    char2idx, class2idx, cedict = tables()
    found = []
    entries = json.loads((MODEL / "phrases_dict.json").read_text(encoding="utf-8"))
    for index, (phrase, readings) in enumerate(sorted(entries.items())):
        if (index % 5 == 0) != (split == "test") or len(phrase) != len(readings):
            continue
        ids = [char2idx["시"], *(char2idx.get(c, char2idx["<UNK>"]) for c in phrase), char2idx["끝"]]
        targets = []
        for position, (char, reading) in enumerate(zip(phrase, readings)):
            label = tone3(reading[0])
            if char not in SANDHI and len(cedict.get(char, [])) > 1 and label in cedict[char] and label in class2idx:
                targets.append((position + 1, class2idx[label]))
        if targets or split != "test":
            found.append((ids, targets))
    return found


def by_length(items: list) -> list[list]:
    groups: dict[int, list] = {}
    for item in items:
        groups.setdefault(len(item[0]), []).append(item)
    return [groups[length] for length in sorted(groups)]


def accuracy(model: nn.Module, items: list) -> float:
    right = total = 0
    with torch.no_grad():
        for group in by_length(items):
            logits = model(torch.tensor([ids for ids, _ in group]))
            for row, (_, targets) in enumerate(group):
                for position, label in targets:
                    right += int(logits[row, position].argmax()) == label
                    total += 1
    return right / total


def evaluate(model: nn.Module) -> dict[str, float]:
    """Accuracy of the polyphonic characters' readings on the held-out phrases, and on each half (alternate phrases:
    the noise)."""
    test = phrases("test")
    return {"accuracy": accuracy(model, test), "accuracy (half A)": accuracy(model, test[0::2]),
            "accuracy (half B)": accuracy(model, test[1::2])}


def make():
    """(model, example inputs, unlabelled batches, evaluate) for isscompress --arch."""
    groups = [torch.tensor([ids for ids, _ in group]) for group in by_length(phrases("finetune"))]

    def batches():
        cut = [(g[i:i + 64],) for g in groups for i in range(0, len(g), 64)]
        order = torch.randperm(len(cut), generator=torch.Generator().manual_seed(0)).tolist()
        return [cut[i] for i in order]

    return PolyphoneBiLSTM().eval(), (groups[2][:8],), batches, evaluate
