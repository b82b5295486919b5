"""Character-level language models: every character a token (spaces and newlines included), bits per character."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.data import build_vocabulary, read_vocabulary, tokenize
from isscompress.errors import DataError, RecipeError
from conftest import EXCERPT

runner = CliRunner()


def test_char_vocabulary_holds_space_and_newline_and_reads_back_from_json(tmp_path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("ab a\nb\tc\n")
    vocabulary = build_vocabulary([text], "char")
    assert vocabulary.words == tuple(sorted(set("ab a\nb\tc\n")))  # char-rnn's order
    assert tokenize(text, vocabulary, "char").tolist() == [vocabulary.index[c] for c in "ab a\nb\tc\n"]
    stored = tmp_path / "vocab.json"
    stored.write_text(json.dumps(list(vocabulary.words)))
    assert read_vocabulary(stored) == vocabulary
    stored.write_text('["a", 1]')
    with pytest.raises(DataError, match="must be a string"):
        read_vocabulary(stored)


def test_train_and_evaluate_a_character_level_model(tmp_path) -> None:
    recipe = tmp_path / "char.yaml"
    recipe.write_text(f"""
data: {{train: {EXCERPT / 'train.txt'}, valid: {EXCERPT / 'valid.txt'}, level: char,
       max_train_tokens: 6000, max_eval_tokens: 2000}}
finetune: {{epochs: 1, lr: 2.0, batch_size: 10, bptt: 30, log_every: 10}}
""")
    model = tmp_path / "char.safetensors"
    result = runner.invoke(app, ["train", "-r", str(recipe), "-o", str(model), "-w", "24", "-e", "16"])
    assert result.exit_code == 0, result.output
    checkpoint = isscompress.load_checkpoint(model)
    assert checkpoint.metadata.level == "char" and " " in checkpoint.metadata.vocabulary
    assert "\n" in checkpoint.metadata.vocabulary and checkpoint.spec.vocab_size < 100

    result = runner.invoke(app, ["eval", str(model), "--data", str(EXCERPT / "test.txt"), "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["level"] == "char"  # taken from the checkpoint
    characters = len((EXCERPT / "test.txt").read_text(encoding="utf-8"))
    assert measured["tokens"] == (characters // 10 - 1) * 10  # every character, batched in 10 columns
    assert measured["bits_per_token"] == pytest.approx(measured["loss"] / math.log(2))
    assert 1 < measured["bits_per_token"] < math.log2(checkpoint.spec.vocab_size) + 1
    shown = runner.invoke(app, ["eval", str(model), "--data", str(EXCERPT / "test.txt"), "--char"])
    assert "bits per character" in shown.stdout


def test_data_split_cuts_one_text_at_line_boundaries(tmp_path):
    """data.split: one corpus file, cut once into train/valid/test by characters at line boundaries."""
    text = "".join(f"line {i}: {'x' * (i % 7)}\n" for i in range(400))
    (tmp_path / "corpus.txt").write_text(text)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text("data: {split: corpus.txt, split_fractions: [0.8, 0.1], level: char}\n")
    recipe = isscompress.load_recipe(recipe_path)
    parts = [recipe.data.train.read_text(), recipe.data.valid.read_text(), recipe.data.test.read_text()]
    assert "".join(parts) == text and all(p.endswith("\n") for p in parts)
    assert abs(len(parts[0]) / len(text) - 0.8) < 0.02 and abs(len(parts[1]) / len(text) - 0.1) < 0.02
    assert recipe.data.split is None  # the resolved recipe names its three files
    assert isscompress.load_recipe(recipe_path).data.train == recipe.data.train  # cut once, cached by content
    recipe_path.write_text("data: {split: corpus.txt, train: corpus.txt}\n")
    with pytest.raises(RecipeError, match="both given"):
        isscompress.load_recipe(recipe_path)
    recipe_path.write_text("data: {split: corpus.txt, split_fractions: [0.9, 0.2]}\n")
    with pytest.raises(RecipeError, match="add up to less than 1"):
        isscompress.load_recipe(recipe_path)
