"""inspect and shrink as a user runs them, including every bad input the issue lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import wlm, PTB_MODEL, make_rnn_model
from safetensors.torch import save_file
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.core.surgery import mask_state_dict

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _sparse_checkpoint(tmp_path: Path, dead: dict[str, list[int]], tie: bool = False) -> Path:
    """A word_language_model checkpoint whose listed units have all-zero ISS groups."""
    model = make_rnn_model("LSTM", ntoken=23, ninp=6, nhid=6, nlayers=2, tie=tie)
    source = tmp_path / "dense.pt"
    torch.save(model.state_dict(), source)
    checkpoint = isscompress.load_checkpoint(source)
    kept = {gs.name: torch.tensor([u for u in range(gs.size) if u not in dead.get(gs.name, [])])
            for gs in checkpoint.group_sets}
    state = mask_state_dict(checkpoint.state, checkpoint.group_sets, kept)
    path = tmp_path / "sparse.safetensors"
    save_file({_as_word_language_model(k): v.contiguous() for k, v in state.items()}, str(path))
    return path


def _as_word_language_model(key: str) -> str:
    """layers.{l}.weight_ih_l0 -> rnn.weight_ih_l{l}: back to the pytorch/examples names."""
    if not key.startswith("layers."):
        return key
    _, layer, name = key.split(".")
    return f"rnn.{name[:-1]}{layer}"




def test_inspect_prints_layers_costs_and_norms(tmp_path) -> None:
    path = _sparse_checkpoint(tmp_path, {"layer0": [1, 2]})
    result = run("inspect", path)
    assert result.exit_code == 0, result.output
    assert "word_language_model" in result.output and "LSTM" in result.output
    assert "layer0" in result.output and "multiply-adds" in result.output


def test_inspect_json_is_one_document(tmp_path) -> None:
    path = _sparse_checkpoint(tmp_path, {"layer0": [1, 2]})
    result = run("inspect", path, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    layer0 = next(n for n in data["group_norms"] if n["name"] == "layer0")
    assert layer0["units"] == 6 and layer0["under"]["1e-4"] == 2
    assert data["model"]["macs_per_token"]["recurrent"] == 2 * 4 * 6 * 12


def test_shrink_removes_dead_units_and_records_provenance(tmp_path) -> None:
    source = _sparse_checkpoint(tmp_path, {"layer0": [0, 3], "layer1": [5]})
    out = tmp_path / "small.safetensors"
    result = run("shrink", source, "-o", out, "--threshold", "1e-6")
    assert result.exit_code == 0, result.output
    assert "multiply-adds" in result.output and "agree" in result.output
    small = isscompress.load_checkpoint(out)
    assert small.spec.widths == [4, 5]
    assert small.metadata.kept["layer0"] == [1, 2, 4, 5]
    assert small.metadata.source["sha256"] == isscompress.load_checkpoint(source).sha256
    assert small.metadata.widths_before == {"layer0": 6, "layer1": 6, "embedding": 6}
    dense = isscompress.load(source)
    tokens = torch.randint(0, 23, (7, 3))
    with torch.no_grad():
        torch.testing.assert_close(small.model()(tokens)[0], dense(tokens)[0], rtol=1e-5, atol=1e-6)
    again = run("inspect", out)  # the shrunk layout is loadable by every command
    assert again.exit_code == 0 and "word_language_model" in again.output


def test_shrink_tied_model_keeps_the_tie(tmp_path) -> None:
    source = _sparse_checkpoint(tmp_path, {"layer1": [2]}, tie=True)
    out = tmp_path / "small.safetensors"
    assert run("shrink", source, "-o", out, "-t", "1e-6").exit_code == 0
    model = isscompress.load(out)
    assert model.encoder.weight.shape == (23, 5) and model.decoder.weight is model.encoder.weight


def test_missing_file(tmp_path, clean_failure) -> None:
    clean_failure(run("shrink", tmp_path / "nope.pt", "-o", tmp_path / "out.safetensors"),
                          "nope.pt does not exist", folder=tmp_path)


def test_not_a_checkpoint(tmp_path, clean_failure) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    clean_failure(run("inspect", path), "notes.txt is not a checkpoint")


def test_truncated_safetensors(tmp_path, clean_failure) -> None:
    good = _sparse_checkpoint(tmp_path, {})
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    clean_failure(run("shrink", bad, "-o", tmp_path / "out.safetensors"),
                          "cut.safetensors is a damaged safetensors file", "truncated")


def test_unknown_layout_lists_families(tmp_path, clean_failure) -> None:
    path = tmp_path / "cnn.safetensors"
    save_file({"conv1.weight": torch.zeros(3, 3), "fc.weight": torch.zeros(2, 2)}, str(path))
    clean_failure(run("inspect", path), "matches no known model family", "conv1.weight",
                          "word_language_model", "awd_lstm", "--family")


def test_inconsistent_shapes_name_the_tensor(tmp_path, clean_failure) -> None:
    state = make_rnn_model().state_dict()
    state["rnn.weight_hh_l1"] = torch.zeros(24, 5)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    clean_failure(run("inspect", path), "rnn.weight_hh_l1", "rnn.weight_ih_l1")


def test_output_exists_needs_force(tmp_path, clean_failure) -> None:
    source = _sparse_checkpoint(tmp_path, {"layer0": [1]})
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")
    clean_failure(run("shrink", source, "-o", out, "-t", "1e-6"), "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    assert run("shrink", source, "-o", out, "-t", "1e-6", "--force").exit_code == 0
    assert isscompress.load_checkpoint(out).spec.widths == [5, 6]


def test_output_equal_to_input_is_refused(tmp_path, clean_failure) -> None:
    source = _sparse_checkpoint(tmp_path, {})
    before = source.read_bytes()
    clean_failure(run("shrink", source, "-o", source, "--force"), "is the input file")
    assert source.read_bytes() == before


def test_threshold_that_kills_a_layer(tmp_path, clean_failure) -> None:
    source = _sparse_checkpoint(tmp_path, {})
    clean_failure(run("shrink", source, "-o", tmp_path / "out.safetensors", "-t", "1e9"),
                          "every unit of layer 0", "largest ISS group norm", "threshold below", folder=tmp_path)


def test_family_override_and_unknown_family(tmp_path, clean_failure) -> None:
    source = _sparse_checkpoint(tmp_path, {})
    overridden = run("inspect", source, "--family", "word_language_model", "--json")
    assert overridden.exit_code == 0, overridden.output
    assert json.loads(overridden.stdout)["model"]["family"] == "word_language_model"
    clean_failure(run("inspect", source, "--family", "awd_lstm"), "(awd_lstm layout)", "No recurrent layer tensors")
    clean_failure(run("inspect", source, "--family", "keras"), "Unknown model family 'keras'")


def test_exit_codes_tell_bad_input_a_bad_command_line_and_a_bug_apart(tmp_path, monkeypatch, clean_failure) -> None:
    source = _sparse_checkpoint(tmp_path, {})
    clean_failure(run("inspect", tmp_path / "missing.pt"), "does not exist")  # 1: bad input
    assert run("inspect", source, "--no-such-option").exit_code == 2  # 2: Typer's usage error

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("isscompress.verbs.inspect.all_unit_norms", bug)
    result = run("inspect", source)
    assert result.exit_code == 3, result.output  # 3: a bug of ours, still one paragraph
    assert "internal error: ZeroDivisionError" in result.stderr and "Traceback" not in result.output


@pytest.mark.skipif(not PTB_MODEL.exists(), reason="shared PTB model not present")
def test_real_ptb_model_inspects_and_shrinks(tmp_path) -> None:
    path = PTB_MODEL / "model.safetensors"
    result = run("inspect", path, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["model"]["family"] == "word_language_model"
    assert data["model"]["total_parameters"] == 4_653_200  # as its README states
    # Zero 50 units of layer 0 the way ISS fine-tuning would, then shrink them away.
    checkpoint = isscompress.load_checkpoint(path)
    kept = {"layer0": torch.arange(50, 200), "layer1": torch.arange(200)}
    sparse = tmp_path / "sparse.safetensors"
    masked = mask_state_dict(checkpoint.state, checkpoint.group_sets, kept)
    save_file({_as_word_language_model(k): v for k, v in masked.items()}, str(sparse))
    out = tmp_path / "small.safetensors"
    result = run("shrink", sparse, "-o", out, "-t", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["widths_after"] == {"layer0": 150, "layer1": 200, "embedding": 200}
    assert out.stat().st_size < path.stat().st_size
    # checked here: pytorch/examples' own RNNModel holding the masked weights computes what the shrunk file does
    from safetensors.torch import load_file

    reference = wlm.RNNModel("LSTM", 10_000, 200, 200, 2).eval()
    reference.load_state_dict(load_file(sparse))
    tokens = torch.randint(0, 10_000, (7, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = reference(tokens)
        actual, _ = isscompress.load(out).eval()(tokens)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_removing_units_that_are_not_zero_is_said_with_the_distance_from_the_original(tmp_path, small_lm) -> None:
    out = tmp_path / "small.safetensors"
    result = run("shrink", small_lm, "-o", out, "-t", "0.5")
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stdout.split())
    assert "warning: the removed units were not zero" in shown and "differ from the original's by up to" in shown
    report = json.loads(run("shrink", small_lm, "-o", out, "-t", "0.5", "--force", "--json").stdout)
    assert report["largest_removed_norm"] > 0.15 and report["original_max_abs_diff"] > 10 * report["tolerance"]
    # the same units, zeroed first (what ISS fine-tuning leaves): the shrunk model is the original
    checkpoint = isscompress.load_checkpoint(out)
    kept = {name: torch.tensor(indices) for name, indices in checkpoint.metadata.kept.items()}
    source = isscompress.load_checkpoint(small_lm)
    zeroed = tmp_path / "zeroed.safetensors"
    isscompress.save_checkpoint(isscompress.Checkpoint(source.spec, mask_state_dict(source.state, source.group_sets,
                                                                                     kept), "isscompress",
                                                       metadata=source.metadata), zeroed)
    result = run("shrink", zeroed, "-o", tmp_path / "exact.safetensors", "-t", "0")
    assert result.exit_code == 0 and "warning" not in result.stdout
    report = json.loads(run("shrink", zeroed, "-o", tmp_path / "exact.safetensors", "-t", "0", "--force",
                            "--json").stdout)
    assert report["largest_removed_norm"] == 0 and report["original_max_abs_diff"] == report["max_abs_diff"]
    assert report["widths_after"] == checkpoint.metadata.widths_after
