"""Fixtures: checkpoints in the layouts users have, made by the libraries that make them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

TESTS = Path(__file__).parent
SHARED = TESTS.parent.parent / "shared"
PTB = SHARED / "data" / "ptb"
PTB_MODEL = SHARED / "models" / "ptb-small-lstm"

sys.path.insert(0, str(TESTS / "wlm"))
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
