"""Fuzzing the checkpoint readers and the recipe parser: any input either works or raises our own
one-paragraph error; nothing else escapes. CI runs a few hundred inputs each; ``-m slow`` runs 10,000."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_rnn_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from isscompress.errors import IsscompressError
from isscompress.io.loading import load_checkpoint
from isscompress.recipe import parse_recipe

FOLDER = Path(tempfile.mkdtemp(prefix="isscompress-fuzz-"))


def _seed_files() -> list[bytes]:
    state = make_rnn_model(ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = FOLDER / "seed.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return [buffer.getvalue(), path.read_bytes()]


SEEDS = _seed_files()


@st.composite
def mutated_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:  # the first bytes: safetensors header length, zip magic, pickle protocol
            data[draw(st.integers(0, min(15, len(data) - 1)))] = draw(st.integers(0, 255))
    return bytes(data)


def _read(content: bytes) -> None:
    path = FOLDER / f"fuzz-{os.getpid()}.bin"
    path.write_bytes(content)
    _read_path(path)


def _read_path(path: Path) -> None:
    """Either a checkpoint, or our own one-paragraph error; nothing else may escape."""
    try:
        load_checkpoint(path)
    except IsscompressError as err:
        assert str(err).strip()


FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=300, **FUZZ)
@given(mutated_files() | st.binary(max_size=64))
def test_checkpoint_reader_never_crashes(content) -> None:
    _read(content)


@pytest.mark.slow
@settings(max_examples=10_000, **FUZZ)
@given(mutated_files() | st.binary(max_size=64))
def test_checkpoint_reader_never_crashes_10k(content) -> None:
    _read(content)


SECTIONS = ["model", "data", "finetune", "iss", "shrink", "recover", "evaluate", "lamda", "x"]
KEYS = ["lambda", "lr", "epochs", "method", "train", "vocab", "threshold", "batch_size", "layer_multipliers",
        "family", "dropout", "clip", "unknown"]
values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
    max_leaves=6,
)
recipes = st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), values, max_size=4) | values,
                          max_size=4)


def _parse(text: str) -> None:
    try:
        parse_recipe(text, "fuzz.yaml")
    except IsscompressError as err:
        assert "fuzz.yaml" in str(err)


@settings(max_examples=300, **FUZZ)
@given(recipes.map(lambda d: yaml.safe_dump(d)) | st.text(max_size=60))
def test_recipe_parser_never_crashes(text) -> None:
    _parse(text)


@pytest.mark.slow
@settings(max_examples=10_000, **FUZZ)
@given(recipes.map(lambda d: yaml.safe_dump(d)) | st.text(max_size=60))
def test_recipe_parser_never_crashes_10k(text) -> None:
    _parse(text)


# --- Keras configurations and .npy headers, mutated the way a crafted file would be ------------------------------

KERAS_FIXTURES = Path(__file__).parent / "fixtures" / "keras"
KERAS_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=6)
KERAS_KEYS = st.sampled_from(["class_name", "config", "units", "activation", "recurrent_activation", "go_backwards",
                        "return_sequences", "layer", "backward_layer", "merge_mode", "input_dim", "output_dim",
                        "mask_zero", "time_major", "reset_after", "use_bias", "registered_name", "module", "name",
                        "inbound_nodes", "layers", "weight_names"]) | st.text(max_size=10)


def _mutate_json(draw, node) -> None:
    """Change, add or delete one key somewhere in a JSON tree, in place."""
    path = []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node, key=str)) if isinstance(node, dict) else st.integers(0, len(node) - 1))
        path.append((node, key))
        node = node[key]
    if not path:
        return
    parent, key = path[-1]
    action = draw(st.sampled_from(["set", "delete", "add"]))
    if action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(KERAS_KEYS)] = draw(KERAS_VALUES)
    else:
        parent[key] = draw(KERAS_VALUES)


@st.composite
def keras_configs(draw) -> tuple[str, dict]:
    name = draw(st.sampled_from(["k2_lstm_lm.h5", "k2_bigru.h5", "k2_cudnn_gru.h5", "k3_bilstm.keras"]))
    config = json.loads(KERAS_CONFIGS[name])
    for _ in range(draw(st.integers(1, 4))):
        _mutate_json(draw, config)
    return name, config


def _keras_config_text(name: str) -> str:
    if name.endswith(".keras"):
        with zipfile.ZipFile(KERAS_FIXTURES / name) as archive:
            return archive.read("config.json").decode()
    import h5py

    with h5py.File(KERAS_FIXTURES / name, "r") as f:
        return f.attrs["model_config"]


KERAS_CONFIGS = {name: _keras_config_text(name) for name in
                 ["k2_lstm_lm.h5", "k2_bigru.h5", "k2_cudnn_gru.h5", "k3_bilstm.keras"]}


def _write_keras(name: str, config: dict) -> Path:
    path = FOLDER / f"fuzz-{os.getpid()}-{name}"
    if name.endswith(".keras"):
        with zipfile.ZipFile(KERAS_FIXTURES / name) as old, zipfile.ZipFile(path, "w") as new:
            for info in old.infolist():
                new.writestr(info, json.dumps(config) if info.filename == "config.json" else old.read(info))
    else:
        import h5py

        shutil.copy(KERAS_FIXTURES / name, path)
        with h5py.File(path, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
    return path


@settings(max_examples=150, **FUZZ)
@given(keras_configs())
def test_keras_reader_never_crashes_on_mutated_configs(case) -> None:
    pytest.importorskip("h5py")
    _read_path(_write_keras(*case))


def _npz_seed() -> dict[str, bytes]:
    state = make_rnn_model(ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict()
    members = {}
    for key, value in state.items():
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, value.numpy())
        members[f"{key}.npy"] = buffer.getvalue()
    return members


NPZ_SEED = _npz_seed()


@st.composite
def mutated_npz(draw) -> dict[str, bytes]:
    members = dict(NPZ_SEED)
    for _ in range(draw(st.integers(1, 6))):
        name = draw(st.sampled_from(sorted(members)))
        data = bytearray(members[name])
        if not data:
            continue
        kind = draw(st.sampled_from(["header byte", "header text", "truncate", "extend"]))
        if kind == "header byte":
            data[draw(st.integers(0, min(len(data), 128) - 1))] = draw(st.integers(0, 255))
        elif kind == "header text":  # the dict literal numpy parses: dtype, order, shape
            header_end = data.index(b"\n") if b"\n" in data else 10
            start = draw(st.integers(10, max(10, header_end - 1)))
            data[start:start + 6] = draw(st.sampled_from([b"'|O',", b"'>f4',", b"(9999", b"True, ", b"'<U3',",
                                                          b"[('a',", b"-1, ", b"(2**62"]))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)):]
        else:
            data += draw(st.binary(min_size=1, max_size=32))
        members[name] = bytes(data)
    return members


@settings(max_examples=200, **FUZZ)
@given(mutated_npz())
def test_npz_reader_never_crashes_on_mutated_headers(members) -> None:
    path = FOLDER / f"fuzz-{os.getpid()}.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    _read_path(path)


# --- our own metadata record, with every field given values of every JSON type ----------------------------------

METADATA_FIELDS = ["format_version", "family", "architecture", "spec", "stage", "recipe", "vocabulary", "level",
                   "threshold", "widths_before", "widths_after", "kept", "max_abs_diff", "source", "lineage"]
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False)
                           | st.sampled_from(["LSTM", "GRU", "word", "false", "1", "layer0", "recurrent_stack"]),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["tied", "cell", "layer0", "stage", "from", "sha256", "file", "layers"]),
                               inner, max_size=3), max_leaves=8)
METADATA_SEED = FOLDER / "metadata-seed.safetensors"


@settings(max_examples=200, **FUZZ)
@given(st.dictionaries(st.sampled_from(METADATA_FIELDS), JSON_VALUES, max_size=4))
def test_any_metadata_record_loads_or_is_refused_by_name(record) -> None:
    """A tampered record either reads (and shows) or is our one-paragraph error; never another exception."""
    from isscompress.io.metadata import Metadata

    state = make_rnn_model(ntoken=11, ninp=3, nhid=3, nlayers=1).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(METADATA_SEED),
              metadata={"isscompress": json.dumps(record)})
    try:
        checkpoint = load_checkpoint(METADATA_SEED)
        checkpoint.metadata.shown()
        assert isinstance(Metadata.from_header(checkpoint.metadata.to_header()), Metadata)
    except IsscompressError as err:
        assert str(err).strip()
