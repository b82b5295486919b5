"""Keras models as shipped before Keras 2.3 — LSTMs with hard-sigmoid gates, a BatchNormalization between
bidirectional layers (shakkala's model) — read exactly and shrunk exactly; what cannot be folded is refused by name.
The files are real Keras's (tests/fixtures/keras/make_fixtures.py); test_keras.py compares them with Keras's outputs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.errors import CheckpointError, DataError
from isscompress.layers.hard_lstm import HardSigmoidLSTM

h5py = pytest.importorskip("h5py")
FIXTURES = Path(__file__).parent / "fixtures" / "keras"
BN_FILE = FIXTURES / "k2_bilstm_bn.h5"


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(0.2 * x + 0.5, 0, 1)  # Keras 1/2's backend.hard_sigmoid


def reference(layer: HardSigmoidLSTM, x: torch.Tensor, suffix: str) -> torch.Tensor:
    """One direction, step by step as Keras's LSTMCell writes it (gates i, f, c, o)."""
    w_ih, w_hh = getattr(layer, f"weight_ih_l0{suffix}"), getattr(layer, f"weight_hh_l0{suffix}")
    bias = getattr(layer, f"bias_ih_l0{suffix}") + getattr(layer, f"bias_hh_l0{suffix}")
    h = c = torch.zeros(x.shape[1], layer.hidden_size, dtype=x.dtype)
    steps = range(x.shape[0] - 1, -1, -1) if suffix else range(x.shape[0])
    out = [None] * x.shape[0]
    for t in steps:
        i, f, g, o = (x[t] @ w_ih.t() + h @ w_hh.t() + bias).chunk(4, -1)
        c = hard_sigmoid(f) * c + hard_sigmoid(i) * torch.tanh(g)
        h = hard_sigmoid(o) * torch.tanh(c)
        out[t] = h
    return torch.stack(out)


def test_the_layer_computes_keras_hard_sigmoid_lstm_in_both_directions() -> None:
    torch.manual_seed(0)
    layer, x = HardSigmoidLSTM(5, 7, bidirectional=True).double(), 3 * torch.randn(6, 2, 5, dtype=torch.float64)
    output, (h_n, c_n) = layer(x)
    expected = torch.cat([reference(layer, x, ""), reference(layer, x, "_reverse")], -1)
    assert torch.allclose(output, expected) and h_n.shape == c_n.shape == (2, 2, 7)
    assert torch.allclose(h_n[1], expected[0, :, 7:])  # the backward direction ends at the first position


class Tagger(nn.Module):
    """shakkala's shape: embedding, two bidirectional hard-sigmoid LSTMs, a per-position classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 6)
        self.first, self.second = HardSigmoidLSTM(6, 8, bidirectional=True), HardSigmoidLSTM(16, 5, bidirectional=True)
        self.head = nn.Linear(10, 4)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        x, _ = self.first(self.embedding(chars))
        x, _ = self.second(x)
        return self.head(x)


def test_a_users_model_of_bidirectional_hard_sigmoid_layers_shrinks_exactly() -> None:
    torch.manual_seed(0)
    model, x = Tagger().eval(), (torch.randint(0, 20, (7, 3)),)
    plan = isscompress.discover(model, x)
    sizes = {gs.name: gs.size for gs in plan.group_sets if gs.kind == "recurrent"}
    assert sizes == {"first.l0": 8, "first.l0.reverse": 8, "second.l0": 5, "second.l0.reverse": 5}
    kept = {gs.name: torch.tensor([0, 2, 3]) for gs in plan.group_sets}
    model.load_state_dict(isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept))
    small = isscompress.shrink_module(model, x)
    assert small.first.weight_hh_l0_reverse.shape == (12, 3) and small.second.weight_ih_l0.shape == (12, 6)
    with torch.no_grad():
        assert (model(*x) - small(*x)).abs().max() < 1e-6


def test_batchnorm_between_bidirectional_layers_is_folded_and_the_model_shrinks_exactly(tmp_path) -> None:
    checkpoint = isscompress.load_checkpoint(BN_FILE)
    assert checkpoint.spec.cell == "LSTM_HARD_SIGMOID" and checkpoint.spec.bidirectional
    assert (checkpoint.spec.vocab_size, checkpoint.spec.classes) == (30, 7)  # a tagger: 7 classes per token
    assert [layer.input_size for layer in checkpoint.spec.layers] == [8, 12]  # the norm is no layer of its own
    kept = {gs.name: torch.tensor([0, 2, 3]) if gs.name.startswith("layer0") else torch.arange(gs.size)
            for gs in checkpoint.group_sets}
    masked = replace(checkpoint, state=isscompress.mask_state_dict(checkpoint.state, checkpoint.group_sets, kept))
    result = isscompress.shrink(masked, tmp_path / "small.safetensors", threshold=1e-9)
    assert result.widths_after["layer0"] == result.widths_after["layer0.reverse"] == 3
    assert result.max_abs_diff <= result.tolerance  # the shrunk model computes what the masked one does
    small = isscompress.load_checkpoint(tmp_path / "small.safetensors")
    assert small.spec.cell == "LSTM_HARD_SIGMOID" and small.spec.layers[1].input_size < 12


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_hard_sigmoid_tagger_exports_and_runs_as_it_computes(tmp_path, fmt) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    output = tmp_path / f"tagger.{'onnx' if fmt == 'onnx' else 'pt'}"
    result = isscompress.export(BN_FILE, output, fmt=fmt)  # refused when its runtime's outputs differ
    assert output.is_file() and result.max_abs_diff < 1e-5 and result.outputs[0] == "logits"


def test_a_tagger_is_said_to_be_one_and_language_model_verbs_refuse_it(tmp_path) -> None:
    inspected = CliRunner().invoke(app, ["inspect", str(BN_FILE)], terminal_width=200)
    assert inspected.exit_code == 0 and "vocabulary 30 -> 7 classes per token" in inspected.output
    text = tmp_path / "text.txt"
    text.write_text("a b c\n" * 20)
    with pytest.raises(DataError, match="labels each of its 30 tokens with one of 7 classes .* --arch"):
        isscompress.evaluate(BN_FILE, text)


def edited(tmp_path: Path, change) -> Path:
    """A copy of the BatchNormalization fixture whose configuration (and weights) ``change`` edits as Keras would
    have written them."""
    path = tmp_path / "edited.h5"
    shutil.copy(BN_FILE, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        change(config["config"]["layers"], f)
        f.attrs["model_config"] = json.dumps(config)
    return path


def _norm(layers: list) -> dict:
    return next(layer["config"] for layer in layers if layer["class_name"] == "BatchNormalization")


def _norm_last(layers: list, f) -> None:
    """The second bidirectional layer and the Dense removed: the norm ends the model."""
    layers[:] = [layer for layer in layers if layer["config"]["name"] not in ("bidirectional_1", "dense")]


def _norm_before_dense_without_bias(layers: list, f) -> None:
    """A second norm (8 features, with a shift) before a Dense that has no bias."""
    dense = next(layer for layer in layers if layer["class_name"] == "Dense")
    dense["config"]["use_bias"] = False
    del f["model_weights/dense/dense/bias:0"]
    f["model_weights/dense"].attrs["weight_names"] = [b"dense/kernel:0"]
    group = f["model_weights"].create_group("bn_out")
    names = []
    for name, value in (("gamma", 1.5), ("beta", 0.25), ("moving_mean", 0.1), ("moving_variance", 2.0)):
        group[f"bn_out/{name}:0"] = np.full(8, value, dtype="float32")
        names.append(f"bn_out/{name}:0".encode())
    group.attrs["weight_names"] = names
    layers.insert(layers.index(dense), {"class_name": "BatchNormalization",
                                        "config": {**_norm(layers), "name": "bn_out"}})


@pytest.mark.parametrize("change, words", [
    (lambda layers, f: _norm(layers).update(renorm=True), ["'batch_normalization'", "renorm = 'True'",
                                                           "moving statistics"]),
    (lambda layers, f: _norm(layers).update(axis=1), ["normalises axis 1"]),
    (lambda layers, f: _norm(layers).update(mode=0), ["setting mode = '0'"]),  # Keras 1's, not read
    (_norm_last, ["'batch_normalization'", "last layer"]),
    (_norm_before_dense_without_bias, ["'dense'", "has no bias, so the shift of the BatchNormalization 'bn_out'"]),
])
def test_what_cannot_be_folded_is_refused_by_name(tmp_path, change, words) -> None:
    with pytest.raises(CheckpointError) as caught:
        isscompress.load_checkpoint(edited(tmp_path, change))
    for word in words:
        assert word in str(caught.value)


def test_a_shift_free_norm_folds_into_a_reader_without_a_bias() -> None:
    from isscompress.io.keras_batchnorm import fold_into_reader

    weight = torch.randn(3, 4, dtype=torch.float64)
    scale, x = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    folded, bias = fold_into_reader(weight, None, (scale, torch.zeros(4, dtype=torch.float64)))
    assert bias is None and torch.allclose(folded @ x, weight @ (scale * x))
    shift = torch.randn(4, dtype=torch.float64)
    folded, bias = fold_into_reader(weight, torch.zeros(3, dtype=torch.float64), (scale, shift))
    assert torch.allclose(folded @ x + bias, weight @ (scale * x + shift))
    np.testing.assert_raises(ValueError, fold_into_reader, weight, None, (scale, shift))
