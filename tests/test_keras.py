"""Keras recurrent models read without TensorFlow: files made by real Keras 2 (tf_keras) and Keras 3, compared
with the outputs Keras itself computed (tests/fixtures/keras/make_fixtures.py wrote both)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.errors import CheckpointError

pytest.importorskip("h5py")  # in the test extras; a plain install reads Keras files after pip install '.[keras]'
FIXTURES = Path(__file__).parent / "fixtures" / "keras"
READABLE = ["k2_lstm_lm.h5", "k2_bigru.h5", "k2_cudnn_lstm.h5", "k2_cudnn_gru.h5", "k3_lstm_lm.keras",
            "k3_bilstm.keras", "k3_gru.keras", "k2_hard_sigmoid.h5", "k2_bilstm_bn.h5", "k3_lstm_bn.keras"]


def keras_logits(checkpoint: isscompress.Checkpoint, tokens: np.ndarray) -> np.ndarray:
    model = checkpoint.spec.build(checkpoint.state).eval()
    with torch.no_grad():
        out, _ = model(torch.from_numpy(tokens).long().t())  # isscompress models are sequence-first
    return out.transpose(0, 1).numpy()


@pytest.mark.parametrize("name", READABLE)
def test_keras_models_compute_what_keras_computed(name):
    checkpoint = isscompress.load_checkpoint(FIXTURES / name)
    reference = np.load(FIXTURES / name.replace(".h5", ".npz").replace(".keras", ".npz"))
    np.testing.assert_allclose(keras_logits(checkpoint, reference["inputs"]), reference["outputs"], atol=2e-6)
    assert checkpoint.spec.vocab_size == 30


def test_what_kinds_of_layers_came_through():
    specs = {name: isscompress.load_checkpoint(FIXTURES / name).spec for name in READABLE}
    assert specs["k2_lstm_lm.h5"].cell == "LSTM" and len(specs["k2_lstm_lm.h5"].layers) == 2
    assert specs["k2_cudnn_gru.h5"].cell == specs["k3_gru.keras"].cell == "GRU"
    spec = isscompress.load_checkpoint(FIXTURES / "k3_bilstm.keras").spec
    assert spec.bidirectional and spec.layers[0].hidden_size == 4


@pytest.mark.parametrize("name, words", [
    ("k3_hard_sigmoid.keras", ["'lstm_2'", "recurrent_activation=\"Keras 3's hard_sigmoid, relu6(x+3)/6\""]),
    ("k2_gru_reset_before.h5", ["'gru_1'", "reset_after=False"]),
])
def test_what_pytorch_cannot_compute_is_refused_by_name(name, words):
    with pytest.raises(CheckpointError) as caught:
        isscompress.load_checkpoint(FIXTURES / name)
    for word in words:
        assert word in str(caught.value)


def test_a_keras_model_shrinks_from_the_command_line(tmp_path):
    out = tmp_path / "small.safetensors"
    result = CliRunner().invoke(app, ["shrink", str(FIXTURES / "k2_lstm_lm.h5"), "-t", "4.0", "--widths", "recurrent",
                                          "-o", str(out)])
    assert result.exit_code == 0, result.output
    small = isscompress.load_checkpoint(out)
    assert [layer.hidden_size for layer in small.spec.layers] < [6, 5]


def test_damaged_and_foreign_hdf5_files_are_named(tmp_path):
    import h5py

    plain = tmp_path / "weights.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="without a Keras model configuration"):
        isscompress.load_checkpoint(plain)
    cut = tmp_path / "cut.h5"
    cut.write_bytes((FIXTURES / "k2_lstm_lm.h5").read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="could not be read"):
        isscompress.load_checkpoint(cut)


def test_live_keras_layers_when_tensorflow_is_installed(tmp_path):
    keras = pytest.importorskip("keras")  # runs where tensorflow/keras is installed, skipped otherwise
    model = keras.Sequential([keras.layers.Input(shape=(None,), dtype="int32"), keras.layers.Embedding(17, 5),
                              keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True)),
                              keras.layers.Dropout(0.2),
                              keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True)),
                              keras.layers.Dense(17)])  # the language-model stack: one cell kind, one direction count
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.4, w.shape).astype("float32") for w in model.get_weights()])
    model.save(tmp_path / "live.keras")
    tokens = rng.integers(0, 17, size=(3, 6)).astype("int32")
    expected = np.asarray(model(tokens))
    np.testing.assert_allclose(keras_logits(isscompress.load_checkpoint(tmp_path / "live.keras"), tokens), expected,
                               atol=2e-6)


def _weights_only(source: Path, target: Path, version: str | None = None) -> Path:
    """What Keras's save_weights writes for the model in ``source``: its model_weights group at the root, no config."""
    import h5py

    with h5py.File(source, "r") as whole, h5py.File(target, "w") as out:
        for key, value in whole["model_weights"].attrs.items():
            out.attrs[key] = value
        if version is not None:
            out.attrs["keras_version"] = version
        for name in whole["model_weights"]:
            whole.copy(whole["model_weights"][name], out, name)
    return target


def _recurrent_layers(path: Path) -> list[str]:
    import h5py

    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    with h5py.File(path) as f:
        return [text(n) for n in f.attrs["layer_names"]
                if any("recurrent_kernel" in text(w) for w in f[text(n)].attrs["weight_names"])]


def _by_layer(checkpoint: isscompress.Checkpoint, names: list[str]) -> dict[str, torch.Tensor]:
    """The whole-model reader's tensors (checked against Keras's outputs above) under the weights-only names."""
    renamed = {}
    for key, value in checkpoint.state.items():
        if key.startswith("layers."):
            index, param = key.split(".", 2)[1:]
            renamed[f"{names[int(index)]}.{param}"] = value
    return renamed


@pytest.mark.parametrize("name", ["k2_cudnn_lstm.h5", "k2_cudnn_gru.h5"])
def test_weights_only_cudnn_layers_are_read_as_the_whole_model_reader_reads_them(tmp_path, name):
    from isscompress.io.files import read_checkpoint

    path = _weights_only(FIXTURES / name, tmp_path / "weights.h5")
    raw = read_checkpoint(path)
    expected = _by_layer(isscompress.load_checkpoint(FIXTURES / name), _recurrent_layers(path))
    assert len(expected) == 4 and all(torch.equal(raw.tensors[key], value) for key, value in expected.items())
    assert "weights only" in raw.attributes["keras"]


def test_weights_only_plain_lstm_is_refused_with_its_keras_versions_default_unless_stated(tmp_path, monkeypatch):
    from isscompress.io.files import read_checkpoint

    for version, default in (("2.1.5", "hard_sigmoid"), ("2.15.0", "sigmoid")):
        path = _weights_only(FIXTURES / "k2_lstm_lm.h5", tmp_path / f"w{version}.h5", version)
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(path)
        message = " ".join(str(caught.value).split())
        assert f"saved by Keras {version}, whose default gate activation is {default}" in message
        assert "ISSCOMPRESS_KERAS_RECURRENT_ACTIVATION=sigmoid" in message and str(path) in message
    monkeypatch.setenv("ISSCOMPRESS_KERAS_RECURRENT_ACTIVATION", "sigmoid")  # the user states what the layers used
    raw = read_checkpoint(path)
    expected = _by_layer(isscompress.load_checkpoint(FIXTURES / "k2_lstm_lm.h5"), _recurrent_layers(path))
    assert len(expected) == 8 and all(torch.equal(raw.tensors[key], value) for key, value in expected.items())
