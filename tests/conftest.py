"""Fixtures: checkpoints in the layouts users have, made by the libraries that make them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from isscompress.architectures.stack import LayerSpec, ModelSpec, group_sets
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.core.groups import member_slice
from isscompress.data import build_vocabulary
from isscompress.io.files import write_checkpoint
from isscompress.io.metadata import Metadata

TESTS = Path(__file__).parent
SHARED = TESTS.parent.parent / "shared"
PTB = SHARED / "data" / "ptb"
PTB_MODEL = SHARED / "models" / "ptb-small-lstm"
EXCERPT = TESTS.parent / "examples" / "data" / "ptb-excerpt"

sys.path.insert(0, str(TESTS / "wlm"))
sys.path.insert(0, str(TESTS.parent / "examples" / "squad"))  # the BiDAF-style user model
import model as wlm  # noqa: E402  (pytorch/examples stand-in, module name "model" on purpose)


def make_rnn_model(rnn_type="LSTM", ntoken=23, ninp=6, nhid=6, nlayers=2, tie=False, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return wlm.RNNModel(rnn_type, ntoken, ninp, nhid, nlayers, tie_weights=tie).eval()


class AwdLstm(nn.Module):
    """AWD-LSTM shape: rnns[i] are single-layer LSTMs of their own widths, weight-dropped on weight_hh."""

    def __init__(self, ntoken=19, widths=(7, 5, 4), seed=0, tie=True) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Embedding(ntoken, widths[-1] if tie else 6)
        sizes = [self.encoder.embedding_dim, *widths]
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1]) for i in range(len(widths)))
        self.decoder = nn.Linear(widths[-1], ntoken)
        if tie:
            self.decoder.weight = self.encoder.weight

    def forward(self, tokens):
        x = self.encoder(tokens)
        for rnn in self.rnns:
            x, _ = rnn(x)
        return self.decoder(x)

    def weight_drop_state(self) -> dict[str, torch.Tensor]:
        """Keys as salesforce/awd-lstm-lm's WeightDrop saves them (weight_hh as _raw under .module)."""
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("rnns."):
                index, name = key.split(".")[1], key.split(".", 2)[2]
                key = f"rnns.{index}.module.{name}" + ("_raw" if name.startswith("weight_hh") else "")
            state[key] = value
        return state


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 19, (5, 2), generator=torch.Generator().manual_seed(1))


def _assert_clean_failure(result, *fragments: str, folder: Path | None = None, empty: bool = False) -> None:
    """A refused command: exit code 1, one 'error:' paragraph holding every fragment, no traceback,
    and in ``folder`` no temporary file or ``out.safetensors`` (nothing at all with ``empty``)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("error:"), message
    for fragment in fragments:
        assert fragment in message, message
    if folder is not None:
        left = [p.name for p in folder.iterdir()]
        if empty:
            assert left == [], "no output or temporary file is left"
        else:
            assert not [name for name in left if name.startswith(".") or name == "out.safetensors"], left


@pytest.fixture
def clean_failure():
    """The check every bad-input test makes of a refused command (see _assert_clean_failure)."""
    return _assert_clean_failure


@pytest.fixture(scope="session")
def small_lm(tmp_path_factory) -> Path:
    """A small LSTM language model over the PTB excerpt's vocabulary (stored in its metadata)."""
    vocabulary = build_vocabulary([EXCERPT / n for n in ("train.txt", "valid.txt", "test.txt")])
    spec = ModelSpec("LSTM", (LayerSpec(16, 24), LayerSpec(24, 20)), vocab_size=len(vocabulary))
    torch.manual_seed(0)
    state = RecurrentModel(spec).canonical_state()
    with torch.no_grad():  # spread the unit norms, as training does (random init makes them all alike)
        for group_set in group_sets(spec):
            scale = torch.linspace(0.15, 1.5, group_set.size)[torch.randperm(group_set.size)]
            for member in group_set.members:
                for start in member.starts:
                    part = member_slice(state[member.key], member, start, group_set.size)
                    part.mul_(scale.view(-1, *([1] * (part.dim() - 1))))
    path = tmp_path_factory.mktemp("lm") / "small.safetensors"
    write_checkpoint(path, state,
                     Metadata(family="isscompress", spec=spec.to_dict(), vocabulary=tuple(vocabulary.words)))
    return path


def _recipe(folder: Path, extra: str = "", method: str = "proximal", lam: float = 0.01, zero: float = 0,
            iss_extra: str = "") -> Path:
    path = folder / "recipe.yaml"
    path.write_text(f"""
data:
  train: {EXCERPT / 'train.txt'}
  valid: {EXCERPT / 'valid.txt'}
  test: {EXCERPT / 'test.txt'}
  max_train_tokens: 4000
  max_eval_tokens: 2000
finetune:
  epochs: 1
  lr: 5.0
  batch_size: 10
  bptt: 20
  log_every: 5
  seed: 7
iss:
  lambda: {lam}
  layer_multipliers: {{layer1: 3.0}}
  method: {method}
  zero_threshold: {zero}
  {iss_extra}
shrink:
  threshold: 0.0001
recover:
  epochs: 1
  lr: 2.0
  batch_size: 10
  bptt: 20
{extra}""")
    return path


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory) -> Path:
    """Derived files (data.split's parts) go to a cache folder of the test run, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("xdg-cache")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder
