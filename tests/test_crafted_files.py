"""Crafted files, made with the real producers (h5py, zipfile, numpy, pickle, torch, safetensors): a reader never
pulls bytes from outside the file, never inflates or allocates more than the file can honestly hold, and never
reads a setting that changes the function as if it were another one. Each refusal is a one-paragraph error."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_rnn_model
from safetensors.torch import save_file
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.errors import CheckpointError
from isscompress.io.files import read_checkpoint

h5py = pytest.importorskip("h5py")
FIXTURES = Path(__file__).parent / "fixtures" / "keras"
SECRET = b"TOP-SECRET-LOCAL-BYTES!!" * 40  # 960 bytes a crafted file must never pull into an output


def _refused(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as caught:
        isscompress.load_checkpoint(path)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message.split(" Save")[0]
    return message


def _h5(tmp_path: Path, name: str = "k2_lstm_lm.h5") -> Path:
    return Path(shutil.copy(FIXTURES / name, tmp_path / name))


def _edit_h5_config(path: Path, edit) -> Path:
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return path


def _edit_keras_zip(source: Path, target: Path, edit) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            new.writestr(info, data)
    return target


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _layer(config: dict, kind: str) -> dict:
    return next(layer for layer in _layers(config) if layer["class_name"] == kind)


def _declare_size(path: Path, member: str, size: int) -> Path:
    """Make a zip member declare ``size`` uncompressed bytes (its local header and central directory entry)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    data[info.header_offset + 22:info.header_offset + 26] = struct.pack("<I", size)
    position = 0
    while (position := data.find(b"PK\x01\x02", position)) >= 0:
        name_length = struct.unpack("<H", data[position + 28:position + 30])[0]
        if data[position + 46:position + 46 + name_length].decode() == member:
            data[position + 24:position + 28] = struct.pack("<I", size)
        position += 4
    path.write_bytes(bytes(data))
    return path


# --- reading only the file --------------------------------------------------------------------------------------

def _replace_embedding(path: Path, make) -> Path:
    with h5py.File(path, "r+") as f:
        group = f["model_weights/embedding/embedding"]
        del group["embeddings:0"]
        make(group, "embeddings:0")
    return path


def test_external_storage_is_refused_and_no_local_bytes_reach_an_output(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    crafted = _replace_embedding(_h5(tmp_path), lambda g, n: g.create_dataset(n, (30, 8), "<f4",
                                                                               external=[(str(secret), 0, 960)]))
    _refused(crafted, "'embedding/embeddings:0'", "keeps its bytes in another file", "secret.bin")
    out = tmp_path / "out.safetensors"
    result = CliRunner().invoke(app, ["shrink", str(crafted), "-o", str(out), "-t", "0"])
    assert result.exit_code == 1 and not out.exists(), result.output
    assert "another file" in " ".join(result.stderr.split())


def test_external_links_and_virtual_datasets_are_refused(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["w"] = np.frombuffer(SECRET, dtype="<f4")[:240].reshape(30, 8)
    linked = _replace_embedding(_h5(tmp_path), lambda g, n: g.__setitem__(n, h5py.ExternalLink(str(other), "/w")))
    _refused(linked, "external link", "other.h5")
    layout = h5py.VirtualLayout(shape=(30, 8), dtype="<f4")
    layout[:, :] = h5py.VirtualSource(str(other), "w", shape=(30, 8))
    virtual = _replace_embedding(Path(shutil.copy(FIXTURES / "k2_lstm_lm.h5", tmp_path / "virtual.h5")),
                                 lambda g, n: g.create_virtual_dataset(n, layout))
    _refused(virtual, "virtual dataset")


def test_a_dataset_without_stored_data_is_refused(tmp_path):
    crafted = _replace_embedding(_h5(tmp_path), lambda g, n: g.create_dataset(n, (30, 8), "<f4", fillvalue=0.5))
    _refused(crafted, "has no data stored")


# --- bombs --------------------------------------------------------------------------------------------------------

def test_an_hdf5_dataset_declaring_64_gib_is_refused_before_allocation(tmp_path):
    crafted = _replace_embedding(_h5(tmp_path), lambda g, n: g.create_dataset(
        n, (2**20, 2**14), "<f4", chunks=(1024, 1024), compression="gzip"))
    assert crafted.stat().st_size < 100_000
    _refused(crafted, "declares 68,719,476,736 bytes", "ISSCOMPRESS_MAX_READ_MB")


def test_a_keras_zip_member_declaring_3_gib_is_refused_before_inflating(tmp_path):
    crafted = _declare_size(Path(shutil.copy(FIXTURES / "k3_lstm_lm.keras", tmp_path / "bomb.keras")),
                            "model.weights.h5", 3 * 2**30)
    _refused(crafted, "member model.weights.h5 declares 3,221,225,472 bytes", "bomb")


def test_an_honest_compressed_npz_reads_and_the_limit_can_be_set(tmp_path, monkeypatch):
    state = {k: v.numpy() for k, v in make_rnn_model(ntoken=4000, ninp=128, nhid=8, nlayers=1).state_dict().items()}
    state["encoder.weight"][:] = 0  # a mostly-zero model compresses far beyond its file size
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, **state)
    assert isscompress.load_checkpoint(path).spec.vocab_size == 4000
    monkeypatch.setenv("ISSCOMPRESS_MAX_READ_MB", "1")
    _refused(path, "member encoder.weight.npy declares 2,048,128 bytes", "ISSCOMPRESS_MAX_READ_MB limit")
    monkeypatch.setenv("ISSCOMPRESS_MAX_READ_MB", "lots")
    _refused(path, "ISSCOMPRESS_MAX_READ_MB='lots' is not a positive number")


def test_a_pickle_repeating_one_array_is_refused_by_its_total(tmp_path):
    array = np.zeros(2**18, dtype=np.float32)  # 1 MiB, pickled once and referenced 400 times
    path = tmp_path / "repeat.pkl"
    path.write_bytes(pickle.dumps({f"rnn.weight_ih_l{i}": array for i in range(400)}))
    assert path.stat().st_size < 2**21
    _refused(path, "declares 1,048,576 bytes", "bomb")


# --- arrays without data, odd dtypes -----------------------------------------------------------------------------

class _NoData:
    def __reduce__(self):
        return np._core.multiarray._reconstruct, (np.ndarray, (1000, 1000), b"f")


class _Uninitialised:
    def __reduce__(self):
        return np.ndarray, ((1000, 1000), "f4")


@pytest.mark.parametrize("value, fragment", [(_NoData(), "without its data"), (_Uninitialised(), "could not be read")])
def test_pickled_arrays_without_data_are_refused(tmp_path, value, fragment):
    path = tmp_path / "nodata.pkl"
    path.write_bytes(pickle.dumps({"rnn.weight_ih_l0": value}))
    _refused(path, fragment)


def test_pickled_arrays_of_every_protocol_read_exactly(tmp_path):
    state = {k: v.numpy() for k, v in make_rnn_model(ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict().items()}
    for protocol in (2, 4, 5):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(state, protocol=protocol))
        loaded = read_checkpoint(path).tensors
        assert all(np.array_equal(loaded[k].numpy(), v) for k, v in state.items())


def _npz_with(tmp_path: Path, name: str, array: np.ndarray) -> Path:
    state = {k: v.numpy() for k, v in make_rnn_model(ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict().items()}
    state["decoder.bias"] = array
    path = tmp_path / f"{name}.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in state.items():
            with archive.open(f"{key}.npy", "w") as handle:
                np.lib.format.write_array(handle, value, allow_pickle=True)
    return path


@pytest.mark.parametrize("name, array, fragment", [
    ("object", np.array([None] * 11, dtype=object), "dtype object"),
    ("text", np.array(["a"] * 11), "not numbers"),
    ("record", np.zeros(11, dtype=[("a", "<f4"), ("b", "<i4")]), "not numbers"),
])
def test_npz_arrays_that_are_not_numbers_are_refused(tmp_path, name, array, fragment):
    _refused(_npz_with(tmp_path, name, array), "array 'decoder.bias'", fragment)


def test_big_endian_npz_arrays_read_as_their_values(tmp_path):
    values = np.linspace(-1, 1, 11).astype(">f4")
    checkpoint = isscompress.load_checkpoint(_npz_with(tmp_path, "big", values))
    assert torch.equal(checkpoint.state["decoder.bias"], torch.from_numpy(values.astype("<f4")))


def test_a_truncated_npz_member_is_refused(tmp_path):
    path = _npz_with(tmp_path, "ok", np.zeros(11, dtype="<f4"))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _refused(path, "damaged")


# --- ambiguity ---------------------------------------------------------------------------------------------------

def test_a_state_dict_with_module_x_and_x_is_refused(tmp_path):
    state = make_rnn_model(ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict()
    state["module.decoder.bias"] = state["decoder.bias"] + 1
    path = tmp_path / "both.pt"
    torch.save(state, path)
    _refused(path, "'decoder.bias'", "'module.decoder.bias'", "same weight")


@pytest.mark.parametrize("setting", [{"reset_after": "false"}, {"linear_before_reset": "0"}])
def test_gru_metadata_with_the_reset_gate_before_is_refused(tmp_path, setting):
    state = make_rnn_model("GRU", ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict()
    path = tmp_path / "gru.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=setting)
    _refused(path, f"{next(iter(setting))} = '{next(iter(setting.values()))}'", "GRU cell")


# --- Keras settings that change the function ----------------------------------------------------------------------

def _set(kind: str, **values):
    return lambda config: _layer(config, kind)["config"].update(values)


def _keras1(config: dict) -> None:
    lstm = _layer(config, "LSTM")["config"]
    lstm["inner_activation"] = "linear"
    del lstm["recurrent_activation"]


def _one_layer_hard(config: dict) -> None:
    _layer(config, "LSTM")["config"]["recurrent_activation"] = "hard_sigmoid"  # Keras 2's, but the other layer's not


def _unsaid(config: dict) -> None:
    del _layer(config, "LSTM")["config"]["recurrent_activation"]


def _insert_masking(config: dict) -> None:
    _layers(config).insert(2, {"class_name": "Masking", "config": {"name": "masking", "mask_value": 0.0}})


H5_CASES = [
    ("k2_cudnn_lstm.h5", _set("CuDNNLSTM", go_backwards=True), ["'cu_dnnlstm' (CuDNNLSTM)", "go_backwards=True"]),
    ("k2_lstm_lm.h5", _keras1, ["recurrent_activation='linear'"]),
    ("k2_lstm_lm.h5", _one_layer_hard, ["different cell kinds (LSTM, LSTM_HARD_SIGMOID)", "one kind for all"]),
    ("k2_lstm_lm.h5", _unsaid, ["does not say its recurrent_activation", "ambiguous"]),
    ("k2_lstm_lm.h5", _set("LSTM", time_major=True), ["time_major=True"]),
    ("k2_lstm_lm.h5", _set("LSTM", return_sequences=False), ["return_sequences=False"]),
    ("k2_lstm_lm.h5", _set("Embedding", mask_zero=True), ["(Embedding)", "mask_zero=True"]),
    ("k2_lstm_lm.h5", _insert_masking, ["'masking' (Masking)", "masked steps"]),
    ("k2_lstm_lm.h5", _set("LSTM", use_layer_norm_beta=True), ["use_layer_norm_beta", "does not know"]),
    ("k2_lstm_lm.h5", lambda c: _layer(c, "LSTM").update(module="mypkg.layers", registered_name="MyPkg>LSTM"),
     ["'MyPkg>LSTM'", "custom class"]),
    ("k2_bigru.h5", lambda c: _layer(c, "Bidirectional")["config"]["layer"].update(class_name="LSTM"),
     ["shapes [(8, 12), (4, 12), (2, 12)]", "a LSTM of 4 units reading 8 features has [(8, 16), (4, 16), (16,)]"]),
    ("k2_bigru.h5", _set("Bidirectional", merge_mode="sum"), ["merges its directions with 'sum'"]),
    ("k2_lstm_lm.h5", lambda c: c["config"].__setitem__("layers", "nothing"), ["has no list of layers"]),
    ("k2_lstm_lm.h5", lambda c: _layers(c).insert(1, None), ["has layer entry 1 that is not a layer"]),
    ("k2_lstm_lm.h5", lambda c: _layer(c, "Embedding")["config"].update(lora_rank=4), ["lora_rank = '4'"]),
]


@pytest.mark.parametrize("name, edit, fragments", H5_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(H5_CASES)])
def test_keras_h5_settings_that_change_the_function_are_refused(tmp_path, name, edit, fragments):
    _refused(_edit_h5_config(_h5(tmp_path, name), edit), *fragments)


def _backward_relu(config: dict) -> None:
    _layer(config, "Bidirectional")["config"]["backward_layer"]["config"]["activation"] = "relu"


KERAS3_CASES = [
    ("k3_bilstm.keras", _backward_relu, ["backward half", "activation='relu'"]),
    ("k3_lstm_lm.keras", lambda c: _layer(c, "LSTM").update(registered_name="MyPkg>LSTM"), ["'MyPkg>LSTM'"]),
    ("k3_bilstm.keras", lambda c: _layer(c, "Bidirectional")["config"]["layer"]["config"].update(go_backwards=True),
     ["go_backwards=True"]),
]


@pytest.mark.parametrize("name, edit, fragments", KERAS3_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(KERAS3_CASES)])
def test_keras3_settings_that_change_the_function_are_refused(tmp_path, name, edit, fragments):
    _refused(_edit_keras_zip(FIXTURES / name, tmp_path / name, edit), *fragments)


# --- functional topology ------------------------------------------------------------------------------------------

def _functional(config: dict, order: list[int] | None = None, reads: dict[int, int] | None = None) -> None:
    """Turn the Sequential k2_lstm_lm config into the Functional one Keras 2 writes for the same chain, with the
    layer list reordered (``order``) or some layers reading another (``reads``: layer -> source)."""
    layers = _layers(config)
    names = [layer["config"]["name"] for layer in layers]
    for index, layer in enumerate(layers):
        layer["name"] = names[index]
        source = (reads or {}).get(index, index - 1)
        layer["inbound_nodes"] = [] if index == 0 else [[[names[source], 0, 0, {}]]]
    config["class_name"] = "Functional"
    config["config"]["layers"] = [layers[i] for i in (order or range(len(layers)))]
    config["config"]["input_layers"] = [[names[0], 0, 0]]
    config["config"]["output_layers"] = [[names[-1], 0, 0]]


def _logits(checkpoint, tokens: np.ndarray) -> np.ndarray:
    model = checkpoint.spec.build(checkpoint.state).eval()
    with torch.no_grad():
        out, _ = model(torch.from_numpy(tokens).long().t())
    return out.transpose(0, 1).numpy()


@pytest.mark.parametrize("order", [None, [0, 4, 2, 1, 3, 5]], ids=["in order", "listed out of order"])
def test_a_functional_chain_is_read_in_data_flow_order(tmp_path, order):
    path = _edit_h5_config(_h5(tmp_path), lambda c: _functional(c, order))
    reference = np.load(FIXTURES / "k2_lstm_lm.npz")
    np.testing.assert_allclose(_logits(isscompress.load_checkpoint(path), reference["inputs"]), reference["outputs"],
                               atol=2e-6)


def test_parallel_or_shared_functional_layers_are_refused(tmp_path):
    branched = _edit_h5_config(_h5(tmp_path), lambda c: _functional(c, reads={4: 2}))  # lstm_1 reads the first lstm
    _refused(branched, "goes to 2 layers")

    def shared(config):
        _functional(config)
        _layers(config)[2]["inbound_nodes"].append([["embedding", 0, 0, {}]])
    _refused(_edit_h5_config(Path(shutil.copy(FIXTURES / "k2_lstm_lm.h5", tmp_path / "s.h5")), shared),
             "called 2 times")

    def with_state(config):
        _functional(config)
        _layers(config)[2]["inbound_nodes"][0][0][3] = {"initial_state": [["embedding", 0, 0]]}
    _refused(_edit_h5_config(Path(shutil.copy(FIXTURES / "k2_lstm_lm.h5", tmp_path / "i.h5")), with_state),
             "initial_state")


def test_a_keras_2_2_list_form_config_reads_as_keras_computed(tmp_path):
    """Keras <= 2.2 wrote a Sequential's layers as the config itself (a list)."""
    path = _edit_h5_config(_h5(tmp_path), lambda c: c.__setitem__("config", _layers(c)))
    reference = np.load(FIXTURES / "k2_lstm_lm.npz")
    np.testing.assert_allclose(_logits(isscompress.load_checkpoint(path), reference["inputs"]), reference["outputs"],
                               atol=2e-6)


def test_a_3d_kernel_is_refused_by_shape(tmp_path):
    path = _h5(tmp_path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights/lstm/lstm/lstm_cell"]
        kernel = group["kernel:0"][()]
        del group["kernel:0"]
        group["kernel:0"] = kernel.reshape(2, 4, 24)
    _refused(path, "'lstm' (LSTM) has weights of shapes [(2, 4, 24), (6, 24), (24,)]")


def _claim_zip_version(path: Path, version: int = 64) -> Path:
    """Every central directory entry says it needs a zip version Python's zipfile refuses to read."""
    data = bytearray(path.read_bytes())
    position = 0
    while (position := data.find(b"PK\x01\x02", position)) >= 0:
        data[position + 6:position + 8] = struct.pack("<H", version)
        position += 4
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make", [
    lambda d: (torch.save(make_rnn_model(ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict(), d / "m.pt"), d / "m.pt")[1],
    lambda d: _npz_with(d, "v", np.zeros(11, dtype="<f4")),
    lambda d: Path(shutil.copy(FIXTURES / "k3_lstm_lm.keras", d / "v.keras")),
], ids=["torch zip", "npz", "keras zip"])
def test_a_zip_claiming_an_unknown_version_is_read_or_refused_never_a_crash(tmp_path, make):
    path = _claim_zip_version(make(tmp_path))
    try:
        isscompress.load_checkpoint(path)  # torch's own reader ignores the version field
    except CheckpointError as err:
        assert str(err).strip()
