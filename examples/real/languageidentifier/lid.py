"""languageidentifier 1.1.1 (pip), its shipped model rebuilt for ``isscompress --arch lid.py:make``.

The package ships ``LID_mixed_model.pkl``: a torch-saved dict holding the character map, the 20 languages and the
state dict of a character-level 2-layer bidirectional LSTM (150 units) whose per-position language scores are summed
over the text. This module rebuilds that architecture with the same parameter names (so the shipped weights load
unchanged), gives isscompress example inputs, unlabelled training batches and the task's own metric: accuracy of the
language predicted for program messages that the system's gettext catalogs hold in all 20 languages
(``catalogs.py``). Set ``LID_MODEL`` to the .pkl (default: ``model/LID_mixed_model.pkl`` beside this file).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from catalogs import messages

HERE = Path(__file__).resolve().parent
WINDOW = 40  # characters per example: every text is cut to its first 40, so batches need no padding


class CharBiLSTMClassifier(nn.Module):
    """Embedding -> 2-layer bidirectional LSTM -> a language score per position -> the scores summed over the text."""

    def __init__(self, vocab: int = 682, embedding: int = 150, hidden: int = 150, layers: int = 2,
                 languages: int = 20) -> None:
        super().__init__()
        self.char_embeddings = nn.Embedding(vocab, embedding, padding_idx=0)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.hidden2lang = nn.Linear(2 * hidden, languages)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.char_embeddings(chars))
        return self.hidden2lang(out).sum(dim=1)


def shipped() -> dict:
    """The package's own file (a dict of the character map, languages, sizes and state dict)."""
    path = Path(os.environ.get("LID_MODEL", HERE / "model" / "LID_mixed_model.pkl"))
    return torch.load(path, map_location="cpu", weights_only=True)


def encode(texts: list[str], char_to_idx: dict[str, int]) -> torch.Tensor:
    unknown = len(char_to_idx)  # the package maps unseen characters to one extra index
    return torch.tensor([[char_to_idx.get(c, unknown) for c in text[:WINDOW]] for text in texts])


@lru_cache(maxsize=2)
def data(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(characters [N, 40], language index [N]) of one split of the catalogs."""
    info = shipped()
    texts, languages = messages(split, list(info["lang_to_idx"]), WINDOW)
    labels = torch.tensor([info["lang_to_idx"][language] for language in languages])
    return encode(texts, info["char_to_idx"]), labels


def accuracy(model: nn.Module, chars: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    with torch.no_grad():
        predicted = torch.cat([model(chars[i:i + batch]).argmax(-1) for i in range(0, len(chars), batch)])
    return float((predicted == labels).float().mean())


def evaluate(model: nn.Module) -> dict[str, float]:
    """Accuracy on the held-out catalogs, and on each half of them (alternate messages; the halves' difference is the
    measurement's noise)."""
    chars, labels = data("test")
    return {"accuracy": accuracy(model, chars, labels), "accuracy (half A)": accuracy(model, chars[0::2], labels[0::2]),
            "accuracy (half B)": accuracy(model, chars[1::2], labels[1::2])}


def make():
    """(model, example inputs, unlabelled batches, evaluate) for isscompress --arch."""
    info = shipped()
    model = CharBiLSTMClassifier(len(info["char_to_idx"]) + 1, info["embedding_dim"], info["hidden_dim"],
                                 info["layers"], len(info["lang_to_idx"])).eval()
    chars, _ = data("finetune")  # labels unused: the original model teaches the compressed one

    def batches():
        order = torch.randperm(len(chars), generator=torch.Generator().manual_seed(0))
        return [(chars[order[i:i + 32]],) for i in range(0, len(chars) - 31, 32)]

    return model, (chars[:8],), batches, evaluate
