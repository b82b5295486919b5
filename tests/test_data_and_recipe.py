"""Corpus reading, vocabulary rules and recipe validation, with the messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import PTB, PTB_MODEL

from isscompress.data import (
    UNK,
    Vocabulary,
    batchify,
    bptt_windows,
    build_vocabulary,
    read_vocabulary,
    tokenize,
)
from isscompress.errors import DataError, RecipeError
from isscompress.recipe import load_recipe, parse_recipe

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.skipif(not PTB_MODEL.exists(), reason="shared PTB data not present")
def test_corpus_vocabulary_is_word_language_models_order() -> None:
    rebuilt = build_vocabulary([PTB / "ptb.train.txt", PTB / "ptb.valid.txt", PTB / "ptb.test.txt"])
    assert rebuilt == read_vocabulary(PTB_MODEL / "vocab.txt")
    assert len(rebuilt) == 10_000


def test_crlf_and_unknown_words(tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_bytes(b" a b \r\n b c \r\n")
    vocab = Vocabulary(("a", "b", "<eos>", UNK))
    assert tokenize(text, vocab).tolist() == [0, 1, 2, 1, 3, 2]
    with pytest.raises(DataError, match=r"1 word\(s\) are not in the vocabulary.*'c'"):
        tokenize(text, Vocabulary(("a", "b", "<eos>")))


@pytest.mark.parametrize("content, message", [(b"", "contains no words"), (b"\xff\xfe abc\n", "not UTF-8")])
def test_bad_text_files(tmp_path, content, message) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        tokenize(path, Vocabulary(("a",)))


def test_batches_are_word_language_models() -> None:
    batched = batchify(torch.arange(23), 4)
    assert batched.shape == (5, 4) and batched[:, 1].tolist() == [5, 6, 7, 8, 9]
    windows = list(bptt_windows(batched, 3))
    assert [w[0].shape[0] for w in windows] == [3, 1]
    assert torch.equal(windows[0][1], batched[1:4])


@pytest.mark.parametrize("text, fragments", [
    ("iss:\n  lamda: 0.1\n", ["line 2", "unknown key 'lamda' in section 'iss'", "Did you mean 'lambda'?"]),
    ("finetune:\n  epochs: 0\n", ["line 2", "'finetune.epochs'", "greater than 0"]),
    ("iss:\n  lambda: -1\n", ["'iss.lambda'", "greater than 0"]),
    ("finetune:\n  lr: fast\n", ["line 2", "'finetune.lr'", "valid number"]),
    ("finetun:\n  lr: 1\n", ["line 1", "unknown key 'finetun' at the top level", "Did you mean 'finetune'?"]),
    ("- a\n", ["top level must be a mapping"]),
    ("", ["is empty"]),
    ("data: [\n", ["not valid YAML"]),
    ("finetune:\n  lr: 1\n  lr: 2\n", ["line 3", "appears twice"]),
    ("iss:\n", ["section 'iss' is empty"]),
])
def test_recipe_errors_name_the_line_and_key(text, fragments) -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "r.yaml")
    for fragment in fragments:
        assert fragment in str(err.value)
    assert "recipe r.yaml" in str(err.value)


def test_recipe_data_paths_must_exist(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  train: nope.txt\n")
    with pytest.raises(RecipeError, match=r"line 2: data.train file .*nope.txt does not exist"):
        load_recipe(recipe)


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_recipe_is_valid(path) -> None:
    recipe = parse_recipe(path.read_text(), str(path))  # the schema, always
    assert parse_recipe(recipe.to_yaml()) == recipe  # what we store in metadata reads back the same
    teacher = recipe.distill.teacher if recipe.distill is not None else "source"
    fetched = teacher == "source" or (path.parent / teacher).exists()  # examples/real fetch their models first
    if ("shared/" not in path.read_text() or PTB.exists()) and fetched:  # data paths too, where the data is here
        load_recipe(path)
    elif not fetched:
        with pytest.raises(RecipeError, match=f"distill.teacher file .*{Path(teacher).name} does not exist"):
            load_recipe(path)


def test_recipe_reference_in_docs_matches_the_schema() -> None:
    from isscompress.recipe_reference import reference_markdown

    docs = Path(__file__).parent.parent / "docs" / "recipe.md"
    assert docs.read_text() == reference_markdown(), "regenerate: python -m isscompress.recipe_reference > docs/recipe.md"


def test_an_unset_method_is_gradual_for_a_goal_without_lambda_and_group_lasso_otherwise(tmp_path) -> None:
    from isscompress.recipe import load_recipe

    cases = {"iss:\n  target: {macs: 0.5}\n": "gradual", "iss:\n  target_widths: {layer0: 4}\n": "gradual",
             "iss:\n  lambda: 0.1\n  target: {macs: 0.5}\n": "subgradient", "iss:\n  lambda: 0.1\n": "subgradient",
             "iss:\n  method: proximal\n  target: {macs: 0.5}\n": "proximal"}
    for text, method in cases.items():
        path = tmp_path / "r.yaml"
        path.write_text(text)
        recipe = load_recipe(path)
        assert recipe.iss.method == method, text
        path.write_text(recipe.to_yaml())  # the stored recipe (checkpoint metadata, --resume) reads back the same
        assert load_recipe(path).iss.method == method
