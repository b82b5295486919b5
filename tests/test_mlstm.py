"""The multiplicative LSTM as a cell kind added through the cell table alone: the stack, a user's model holding the
layer, reading a bare state dict and the property test (tests/test_shrink_property.py draws it like the others) all
follow from its entry."""

from __future__ import annotations

import torch
from torch import nn

import isscompress
from isscompress.architectures import LayerSpec, ModelSpec
from isscompress.architectures.stack_inference import infer_spec
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.layers.mlstm import MLSTMLayer


def reference_step(layer: MLSTMLayer, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """Krause et al.'s equations as UniRep writes them (row vectors times column-major weights)."""
    m = (x @ layer.weight_mx_l0.t()) * (h @ layer.weight_mh_l0.t())
    z = x @ layer.weight_ih_l0.t() + m @ layer.weight_gm_l0.t() + layer.bias_ih_l0
    i, f, o, u = z.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
    return torch.sigmoid(o) * torch.tanh(c), c


def test_the_layer_computes_the_multiplicative_lstm_equations() -> None:
    torch.manual_seed(0)
    layer, x = MLSTMLayer(5, 7).double(), torch.randn(6, 2, 5, dtype=torch.float64)
    h = c = torch.zeros(2, 7, dtype=torch.float64)
    expected = []
    for step in x:
        h, c = reference_step(layer, step, h, c)
        expected.append(h)
    output, (h_n, c_n) = layer(x)
    assert torch.allclose(output, torch.stack(expected)) and torch.allclose(c_n[0], c)


class Protein(nn.Module):
    """UniRep's shape: an embedding, a stack of mLSTM layers, a next-residue head."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(26, 10)
        self.cells = nn.ModuleList([MLSTMLayer(10, 8), MLSTMLayer(8, 8)])
        self.head = nn.Linear(8, 25)

    def forward(self, residues):
        x = self.embedding(residues)
        for cell in self.cells:
            x, _ = cell(x)
        return self.head(x)


def test_a_users_model_of_mlstm_layers_shrinks_exactly() -> None:
    torch.manual_seed(0)
    model, x = Protein().eval(), (torch.randint(0, 26, (9, 3)),)
    plan = isscompress.discover(model, x)
    assert {gs.name: gs.size for gs in plan.group_sets if gs.kind == "recurrent"} == {"cells.0.l0": 8, "cells.1.l0": 8}
    kept = {gs.name: torch.tensor([1, 2, 5, 6]) for gs in plan.group_sets}
    model.load_state_dict(isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept))
    small = isscompress.shrink_module(model, x)
    assert small.cells[1].weight_mh_l0.shape == (4, 4) and small.cells[1].weight_mx_l0.shape == (4, 4)
    with torch.no_grad():
        assert (model(*x) - small(*x)).abs().max() < 1e-6


def test_a_stack_of_mlstm_layers_is_read_back_as_one_from_its_tensors() -> None:
    spec = ModelSpec(cell="MLSTM", layers=(LayerSpec(5, 6), LayerSpec(6, 4)), vocab_size=9)
    state = RecurrentModel(spec).canonical_state()
    assert infer_spec(state) == spec
    macs = spec.macs_per_token()["recurrent"]
    assert macs == (5 * 6) * (5 + 6) + (5 * 4) * (6 + 4)  # 4 gate blocks and m: 5 blocks of H x (input + H)
