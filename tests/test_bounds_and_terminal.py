"""Trust, round 4: every hand-written file is bounded before it is parsed, YAML features no file of ours needs are
refused by line, thread counts and devices are checked, and a file's names never drive the terminal."""

from __future__ import annotations

import json
import time

import pytest
import torch
from test_bad_input_matrix import SPEC, world  # noqa: F401  (the fixture: a model, a recipe, text)
from typer.testing import CliRunner

from isscompress.anymodel.groups_file import parse_groups
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.cli import app
from isscompress.cli.console import printable
from isscompress.errors import IsscompressError, RecipeError
from isscompress.io.files import write_checkpoint
from isscompress.io.metadata import Metadata
from isscompress.recipe import load_recipe, parse_recipe

runner = CliRunner()


def _clean_error(result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert pattern in " ".join(result.stderr.split()), result.stderr


@pytest.mark.parametrize("text, message", [
    ("finetune: !!set {a, b}\n", "line 1: the YAML tag 'tag:yaml.org,2002:set' is not accepted"),
    ("finetune: {epochs: !!float 2}\n", "line 1: the YAML tag"),
    ("? [finetune, iss]\n: {epochs: 1}\n", "line 1: a key that is a list or a mapping"),
    ("finetune:\n  <<: {epochs: 2}\n  lr: 1\n", "line 2: a YAML merge key (<<) is not accepted"),
    ("finetune: {epochs: 1}\niss: " + "[" * 70 + "]" * 70 + "\n", "line 2: values nested more than 64 deep"),
    ("finetune:\n  seed: [" + ", ".join(["1"] * 1_200) + "]\n", "more than 1,000 YAML values"),
], ids=["set-tag", "float-tag", "complex-key", "merge-key", "deep", "many-values"])
def test_yaml_features_no_recipe_needs_are_refused_by_line(text, message, monkeypatch) -> None:
    monkeypatch.setattr("isscompress.yaml_lines.MAX_EVENTS", 1_000)  # the rule at a size a test parses quickly
    with pytest.raises(RecipeError) as caught:
        parse_recipe(text, "r.yaml")
    assert message in str(caught.value)


def test_a_huge_recipe_or_groups_file_is_refused_before_it_is_parsed(tmp_path) -> None:
    recipe = tmp_path / "big.yaml"
    recipe.write_text("finetune:\n  seed: [" + "1, " * 1_200_000 + "1]\n")  # 3.6 MB: minutes and gigabytes as YAML
    started = time.perf_counter()
    with pytest.raises(RecipeError, match="a recipe is a few kilobytes"):
        load_recipe(recipe)
    assert time.perf_counter() - started < 30  # refused from its size, not after parsing (generous on a busy machine)
    groups = tmp_path / "groups.yaml"
    groups.write_text("format: isscompress-groups/1\nsets: [" + "0, " * 1_200_000 + "0]\n")
    torch.manual_seed(0)
    model = tmp_path / "m.safetensors"
    write_checkpoint(model, RecurrentModel(SPEC).canonical_state(), Metadata())
    _clean_error(runner.invoke(app, ["inspect", str(model), "--groups", str(groups)]), "a groups file is a few kilobytes")


GROUPS = """format: isscompress-groups/1
sets:
  - {name: cells, size: 6, members: [{key: rnn.weight_hh, axis: 0, starts: [0]}], narrower_than: NARROWER}
  - {name: proj, size: PROJ, members: [{key: rnn.weight_hr, axis: 0, starts: [0]}], narrower_than: OTHER}
"""


@pytest.mark.parametrize("narrower, proj, other, message", [
    ("cells", 4, "cells", "line 3: set 'cells' is narrower_than its own width 'cells'"),
    ("nowhere", 4, "cells", "line 3: set 'cells' is narrower_than 'nowhere', which is no set's name"),
    ("proj", 4, "cells", "line 3: set 'cells' (6 units) is narrower_than 'proj', which has 4"),  # cells < proj < cells
    ("", 8, "cells", "line 4: set 'proj' (8 units) is narrower_than 'cells', which has 6"),
])
def test_narrower_than_rules_that_no_widths_can_keep_are_refused(narrower, proj, other, message) -> None:
    text = GROUPS.replace("NARROWER", narrower or "null").replace("PROJ", str(proj)).replace("OTHER", other)
    with pytest.raises(IsscompressError) as caught:
        parse_groups(text, "g.yaml")
    assert message in str(caught.value)


@pytest.mark.parametrize("args, env, message", [
    (["--threads", "1000000"], {}, "1,000,000 threads were asked for"),
    ([], {"ISSCOMPRESS_THREADS": "1000000"}, "1,000,000 threads were asked for"),
    ([], {"ISSCOMPRESS_THREADS": "99999999999999999999"}, "is not a positive whole number"),
])
def test_thread_counts_past_the_machine_are_refused_not_a_crash(world, monkeypatch, args, env, message) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _clean_error(runner.invoke(app, ["report", str(world["model"]), "--no-speed", *args]), message)


@pytest.mark.parametrize("device", ["meta", "mps", "cuda:x"])
def test_devices_isscompress_does_not_train_on_are_refused_by_the_recipe_line(world, device) -> None:
    world["recipe"].write_text(world["recipe"].read_text().replace("  bptt: 5\n", f"  bptt: 5\n  device: {device}\n"))
    result = runner.invoke(app, ["finetune", str(world["model"]), "-r", str(world["recipe"]), "-o",
                                 str(world["out"] / "t.safetensors")])
    _clean_error(result, "'finetune.device'")


def test_names_with_terminal_control_sequences_are_printed_escaped(world, tmp_path) -> None:
    assert printable("a\x1b]0;owned\x07b\u202ec\n") == "a\\x1b]0;owned\\x07b\\u202ec\n"
    bad = tmp_path / "m.safetensors"
    state = RecurrentModel(SPEC).canonical_state()
    state["\x1b[2Jdecoder.weight\x1b]0;pwned\x07"] = state.pop("decoder.weight")
    write_checkpoint(bad, state, Metadata())
    for command in (["inspect", str(bad)], ["inspect", str(bad), "--family", "isscompress"]):
        result = runner.invoke(app, command, env={"TERM": "xterm", "FORCE_COLOR": "1"})
        assert result.exit_code == 1 and "\x1b]0;" not in result.output and "\x1b[2J" not in result.output
        assert "\\x1b[2J" in result.output or "\\x1b]0;pwned" in result.output
    named = tmp_path / "\x1b[2Jmodel.safetensors"
    named.write_bytes(world["model"].read_bytes())
    result = runner.invoke(app, ["inspect", str(named)])
    assert result.exit_code == 0 and "\x1b[2J" not in result.output and "\\x1b[2Jmodel" in result.output


def test_report_json_stays_valid_json_when_a_metric_is_not_finite(monkeypatch) -> None:
    from isscompress.json_text import finite_json

    data = {"perplexity_after": float("inf"), "delta": float("nan"), "rows": [1.5, float("-inf")]}
    assert json.loads(finite_json(data)) == {"perplexity_after": None, "delta": None, "rows": [1.5, None]}


def test_a_vocabulary_nested_too_deeply_or_a_width_too_large_to_allocate_is_a_clean_error(world, tmp_path) -> None:
    vocab = tmp_path / "vocab.json"
    vocab.write_text("[" * 100_000 + "]" * 100_000)
    world["recipe"].write_text(world["recipe"].read_text().replace("data:\n", f"data:\n  vocab: {vocab}\n"))
    result = runner.invoke(app, ["finetune", str(world["model"]), "-r", str(world["recipe"]), "-o",
                                 str(world["out"] / "t.safetensors")])
    _clean_error(result, "nests its JSON too deeply")
    world["recipe"].write_text(world["recipe"].read_text().replace(f"  vocab: {vocab}\n", ""))
    result = runner.invoke(app, ["train", "-r", str(world["recipe"]), "-o", str(world["out"] / "n.safetensors"),
                                 "-w", "3000000000", "-e", "3000000000"])
    _clean_error(result, "could not be allocated")
    assert not (world["out"] / "n.safetensors").exists()
