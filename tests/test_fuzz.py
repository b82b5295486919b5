"""Fuzzing the checkpoint readers and the recipe parser: any input either works or raises our own
one-paragraph error; nothing else escapes. CI runs a few hundred inputs each; ``-m slow`` runs 10,000."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

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
