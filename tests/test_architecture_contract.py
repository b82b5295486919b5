"""Adding a cell kind is one table entry plus its module (docs/architecture.md): shown with a cell that
PyTorch does not have, with its own parameter names, added at test time."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import isscompress
from isscompress.layers.cells import CELLS, CellKind, CellParam


class MinimalGatedUnit(nn.Module):
    """Zhou et al.'s MGU: f = σ(W_f x + U_f h + b_f); h~ = tanh(W_h x + U_h (f ⊙ h) + b_h); h' = (1 - f) h + f h~.
    A unit whose rows are zero keeps h = 0 from a zero start (f = ½, h~ = 0), so ISS removal is exact."""

    def __init__(self, input_size: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.hidden = hidden
        self.w_in_l0 = nn.Parameter(torch.randn(2 * hidden, input_size) * 0.4)
        self.w_rec_l0 = nn.Parameter(torch.randn(2 * hidden, hidden) * 0.4)
        self.bias_l0 = nn.Parameter(torch.randn(2 * hidden) * 0.1) if bias else None

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = state[0] if state is not None else x.new_zeros(x.size(1), self.hidden)
        w_f, w_h = self.w_in_l0.chunk(2)
        u_f, u_h = self.w_rec_l0.chunk(2)
        b_f, b_h = self.bias_l0.chunk(2) if self.bias_l0 is not None else (0, 0)
        outputs = []
        for x_t in x:
            f = torch.sigmoid(x_t @ w_f.T + h @ u_f.T + b_f)
            h = (1 - f) * h + f * torch.tanh(x_t @ w_h.T + (f * h) @ u_h.T + b_h)
            outputs.append(h)
        return torch.stack(outputs), h.unsqueeze(0)


def _make_mgu(layer, bias: bool, bidirectional: bool) -> nn.Module:
    assert not layer.proj_size and not bidirectional, "this test cell is unidirectional and unprojected"
    return MinimalGatedUnit(layer.input_size, layer.hidden_size, bias)


MGU = CellKind("MGU", 2, ("h",), _make_mgu, params=(
    CellParam("w_in", "gates", "input"), CellParam("w_rec", "gates", "recurrent"), CellParam("bias", "gates", None, "bias")))


@pytest.fixture
def mgu(monkeypatch) -> CellKind:
    monkeypatch.setitem(CELLS, MGU.name, MGU)  # the one table entry
    return MGU


@pytest.mark.parametrize("tied", [False, True])
def test_a_cell_kind_added_to_the_table_shrinks_exactly(mgu, tied) -> None:
    torch.manual_seed(0)
    layers = (isscompress.LayerSpec(5 if tied else 3, 6), isscompress.LayerSpec(6, 5))
    spec = isscompress.ModelSpec("MGU", layers, vocab_size=11, tied=tied)
    state = isscompress.RecurrentModel(spec).double().canonical_state()
    assert state["layers.0.w_in_l0"].shape == (12, layers[0].input_size) and "layers.1.bias_l0" in state
    sets = spec.group_sets()
    kept = {"layer0": torch.tensor([0, 2, 3, 5]), "layer1": torch.tensor([1, 4])}
    masked = isscompress.mask_state_dict(state, sets, kept)
    checkpoint = isscompress.Checkpoint(spec, masked, "test")

    result = isscompress.shrink(checkpoint)  # selects the zero groups, shrinks, checks against the masked model
    small = result.checkpoint
    assert small.spec.widths == [4, 2] and small.spec.cell == "MGU"
    assert small.state["layers.0.w_rec_l0"].shape == (8, 4) and small.state["layers.1.w_in_l0"].shape == (4, 4)
    inputs = spec.probe_inputs(steps=9)  # checked here, not by the verb's own report of its check
    with torch.no_grad():
        torch.testing.assert_close(small.model()(inputs)[0], spec.build(masked)(inputs)[0], rtol=0, atol=1e-12)
    embedding = 11 * layers[0].input_size
    assert spec.parameter_counts()["recurrent"] == sum(v.numel() for k, v in state.items() if k.startswith("layers."))
    assert spec.macs_per_token()["recurrent"] == 2 * 6 * (layers[0].input_size + 6) + 2 * 5 * (6 + 5)
    assert spec.parameter_counts()["embedding"] == embedding


def test_a_unit_that_is_not_zero_everywhere_is_kept(mgu) -> None:
    torch.manual_seed(1)
    spec = isscompress.ModelSpec("MGU", (isscompress.LayerSpec(3, 4),), vocab_size=7)
    state = isscompress.RecurrentModel(spec).canonical_state()
    masked = isscompress.mask_state_dict(state, spec.group_sets(), {"layer0": torch.tensor([0, 1, 3])})
    masked["layers.0.w_rec_l0"][:, 2] += 1e-3  # unit 2 is still read: its group is not zero
    result = isscompress.shrink(isscompress.Checkpoint(spec, masked, "test"))
    assert result.checkpoint.spec.widths == [4]


def test_a_cell_kind_registered_later_is_seen_by_file_loading_and_tracing() -> None:
    """Tables derived from the cell table are computed when asked, not snapshots taken at import."""
    from torch import nn

    from isscompress.architectures.stack import layer_key_pattern
    from isscompress.layers.cells import CELLS, CellKind, CellParam, recurrent_modules

    class Probe(nn.Module):
        pass

    kind = CellKind("PROBE", 1, ("h",), lambda layer, bias, bidirectional: Probe(),
                    (CellParam("weight_px", "gates", "input"),), module_class=Probe)
    assert not layer_key_pattern().match("layers.0.weight_px_l0") and Probe not in recurrent_modules()
    CELLS["PROBE"] = kind
    try:
        assert layer_key_pattern().match("layers.0.weight_px_l0") and Probe in recurrent_modules()
    finally:
        del CELLS["PROBE"]
