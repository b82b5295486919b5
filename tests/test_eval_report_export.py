"""eval, report and export as users run them, with their bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import PTB, PTB_MODEL
from safetensors.torch import save_file
from typer.testing import CliRunner

import isscompress
from isscompress.architectures.stack import LayerSpec, ModelSpec
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.cli import app
from isscompress.io.files import write_checkpoint
from isscompress.io.metadata import Metadata

runner = CliRunner()
WORDS = ["the", "cat", "sat", "on", "mat", "<unk>", "<eos>"]


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def _lm(tmp_path: Path, name: str, spec: ModelSpec, words=WORDS, seed=0) -> Path:
    torch.manual_seed(seed)
    path = tmp_path / name
    write_checkpoint(path, RecurrentModel(spec).canonical_state(),
                     Metadata(family="isscompress", spec=spec.to_dict(), vocabulary=tuple(words)))
    return path


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path, Path]:
    """A dense language model, its shrunk version, and a text file."""
    spec = ModelSpec("LSTM", (LayerSpec(5, 8), LayerSpec(8, 6)), vocab_size=len(WORDS))
    dense = _lm(tmp_path, "dense.safetensors", spec)
    checkpoint = isscompress.load_checkpoint(dense)
    kept = {"layer0": torch.tensor([0, 2, 3, 5, 7]), "layer1": torch.tensor([1, 2, 4])}
    sparse = tmp_path / "sparse.safetensors"
    write_checkpoint(sparse, isscompress.mask_state_dict(checkpoint.state, checkpoint.group_sets, kept),
                     checkpoint.metadata)
    small = tmp_path / "small.safetensors"
    isscompress.shrink(sparse, small)
    text = tmp_path / "text.txt"
    text.write_text(" the cat sat on the mat \n the dog sat \n" * 40)
    return sparse, small, text


@pytest.mark.skipif(not PTB_MODEL.exists(), reason="shared PTB model not present")
def test_eval_matches_the_perplexity_in_the_models_readme() -> None:
    result = run("eval", PTB_MODEL / "model.safetensors", "--data", PTB / "ptb.test.txt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["perplexity"] == pytest.approx(96.86, abs=0.1)


@pytest.mark.skipif(not PTB_MODEL.exists(), reason="shared PTB model not present")
def test_a_pytorch_examples_state_dict_rebuilds_its_vocabulary_from_its_corpus(tmp_path) -> None:
    """No vocabulary beside a main.py checkpoint: --data FOLDER/test.txt stands for the corpus, rebuilt in
    pytorch/examples' order (train, valid, test) — the shared model's README perplexity, for eval and report."""
    from safetensors.torch import load_file

    model = tmp_path / "model.pt"
    torch.save(load_file(PTB_MODEL / "model.safetensors"), model)  # what main.py's users save: a state dict
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"{split}.txt").symlink_to(PTB / f"ptb.{split}.txt")
    test_lines = (PTB / "ptb.test.txt").read_text().splitlines(keepends=True)[:150]  # PTB's test words are all in train
    (data / "test.txt").write_text("".join(test_lines))
    rebuilt = "rebuilt from train.txt, valid.txt, test.txt"
    shipped = isscompress.evaluate(PTB_MODEL / "model.safetensors", data / "test.txt",
                                   vocab=str(PTB_MODEL / "vocab.txt"))  # the vocabulary the model was trained with
    for vocab in ("auto", "corpus"):  # the same words, numbered the same: the very same perplexity
        result = run("eval", model, "--data", data / "test.txt", "--vocab", vocab, "--json")
        assert result.exit_code == 0, result.output
        done = json.loads(result.stdout)
        assert done["perplexity"] == shipped.perplexity and done["vocabulary"] == rebuilt
    small = isscompress.shrink(model, threshold=19).checkpoint
    report = isscompress.report(model, small, data=data / "test.txt", speed=False, max_tokens=2000)
    assert report.vocabulary == rebuilt and report.to_dict()["perplexity"]["vocabulary"] == rebuilt


def test_report_table_json_markdown_and_plots(tmp_path, pair) -> None:
    sparse, small, text = pair
    table = run("report", sparse, small, "--data", text, "--repeats", "2", "--speed-path", "eager")
    assert table.exit_code == 0, table.output
    shown = " ".join(table.stdout.split())  # prose wraps where the console width says; the words are the point
    for fragment in ("width layer 0", "multiply-adds / token", "perplexity", "decode batch 1", "native RNN kernel",
                     "then shrink"):
        assert fragment in shown
    assert "…" not in table.stdout  # printed into a pipe, the table is whole (no cell cut to "un…")
    data = json.loads(run("report", sparse, small, "--data", text, "--json", "--repeats", "2").stdout)
    # the default times the fastest runtime measured for such models: ONNX Runtime, installed with the test extras
    assert {s["path"] for s in data["speed"]} == {"onnxruntime"}
    assert [c["width_after"] for c in data["layers"]] == [5, 3]
    assert data["perplexity"]["delta"] == pytest.approx(0, abs=1e-3)  # dead units removed: same function
    assert {s["workload"] for s in data["speed"]} == {"decode_batch1", "batch20x35"}
    assert data["mac_ratio"] > 1 and data["provenance"]["source"]["file"] == "sparse.safetensors"
    markdown = run("report", sparse, small, "--data", text, "--markdown", "--no-speed").stdout
    assert markdown.startswith("| | before | after | ratio |") and "| width layer 1 | 6 | 3 |" in markdown
    plots = tmp_path / "plots"
    assert run("report", sparse, small, "--plot", plots, "--no-speed").exit_code == 0
    import matplotlib.image

    for name in ("group_norms.png", "widths.png"):
        image = matplotlib.image.imread(plots / name)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_report_of_one_unshrunk_model_shows_what_a_threshold_removes(pair) -> None:
    sparse, _, text = pair
    result = run("report", sparse, "--data", text, "--json")
    data = json.loads(result.stdout)
    assert data["shrunk"] is None and data["speed"] == []
    assert {n["name"]: n["under"]["1e-4"] for n in data["group_norms"]} == {"layer0": 3, "layer1": 3, "embedding": 0}


def test_no_color_is_respected(pair) -> None:
    sparse, small, _ = pair
    result = run("report", sparse, small, "--no-speed", env={"NO_COLOR": "1", "FORCE_COLOR": "1"})
    assert result.exit_code == 0
    codes = {int(c) for sgr in re.findall(r"\x1b\[([0-9;]*)m", result.stdout) for c in sgr.split(";") if c}
    assert codes and not codes & (set(range(30, 39)) | set(range(90, 98))), codes  # styles yes, colours no




def test_report_refuses_mismatched_vocabularies(tmp_path, pair, clean_failure) -> None:
    sparse, _, text = pair
    other = _lm(tmp_path, "other.safetensors", isscompress.load_checkpoint(sparse).spec,
                words=[w.upper() if w[0] != "<" else w for w in WORDS])
    clean_failure(run("report", sparse, other, "--data", text), "different vocabularies")


def test_report_refuses_models_of_different_families(tmp_path, pair, clean_failure) -> None:
    sparse, _, _ = pair
    bare = tmp_path / "bare.safetensors"
    save_file(torch.nn.LSTM(3, 4).state_dict(), str(bare))
    clean_failure(run("report", sparse, bare), "is a isscompress model but bare.safetensors is a lstm_stack model")


@pytest.mark.parametrize("content", [None, ""])
def test_eval_refuses_missing_or_empty_data(tmp_path, pair, content, clean_failure) -> None:
    sparse, _, _ = pair
    data = tmp_path / "data.txt"
    if content is not None:
        data.write_text(content)
    clean_failure(run("eval", sparse, "--data", data), "data.txt")


def test_export_refuses_an_unwritable_output(tmp_path, pair, clean_failure) -> None:
    _, small, _ = pair
    clean_failure(run("export", small, "--format", "onnx", "-o", tmp_path / "missing" / "m.onnx"), "does not exist")
    clean_failure(run("export", small, "--format", "tflite", "-o", tmp_path / "m.tflite"), "Unknown export format")


EXPORT_SPECS = {
    "lstm_lm": ModelSpec("LSTM", (LayerSpec(4, 6), LayerSpec(6, 5)), vocab_size=len(WORDS)),
    "gru_lm": ModelSpec("GRU", (LayerSpec(4, 6), LayerSpec(6, 5)), vocab_size=len(WORDS)),
    "bidirectional": ModelSpec("LSTM", (LayerSpec(3, 6), LayerSpec(12, 4)), bidirectional=True),
    "projected": ModelSpec("LSTM", (LayerSpec(3, 6, 2), LayerSpec(4, 5, 3)), bidirectional=True),
}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", list(EXPORT_SPECS))
def test_export_parity(tmp_path, fmt, name, clean_failure) -> None:
    spec = EXPORT_SPECS[name]
    source = _lm(tmp_path, "m.safetensors", spec) if spec.is_language_model else tmp_path / "m.safetensors"
    if not spec.is_language_model:
        write_checkpoint(source, RecurrentModel(spec).canonical_state(), Metadata(spec=spec.to_dict()))
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    result = run("export", source, "--format", fmt, "-o", out)
    if fmt == "onnx" and name == "projected":
        clean_failure(result, "LSTM with projections", "--format torchscript")
        assert not out.exists()
        return
    assert result.exit_code == 0, result.output
    assert "h0_layer1" in result.stdout
    # Load it back the way a user without isscompress would, and compare on fresh inputs.
    from isscompress.deploy.flat import FlatStateModel, example_arguments, io_names

    model = isscompress.load(source)
    args = example_arguments(model, steps=4, batch=5, seed=3)
    with torch.inference_mode():
        expected = FlatStateModel(model)(*args)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out))
        got = session.run(None, {n: a.numpy() for n, a in zip(io_names(model)[0], args)})
    else:
        got = torch.jit.load(str(out))(*args)
    assert len(got) == len(expected) == 1 + len(spec.layers) * len(spec.cell_kind.states)  # nothing unpaired
    for want, have in zip(expected, got):
        torch.testing.assert_close(torch.as_tensor(have), want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not PTB_MODEL.exists(), reason="shared PTB model not present")
def test_a_quality_loss_is_a_warning_not_only_a_number():
    model, data = PTB_MODEL / "model.safetensors", PTB / "ptb.test.txt"
    lossy = isscompress.shrink(model, threshold=20.0).checkpoint  # removes trained units: a real loss
    result = isscompress.report(model, lossy, data=data, speed=False, max_tokens=5000)
    rise = result.perplexity_delta / result.perplexity_before.perplexity
    assert rise > 0.01 and len(result.warnings) == 1
    assert f"perplexity rose by {rise:.1%}" in result.warnings[0] and result.to_dict()["warnings"] == result.warnings
    assert "**Warning:** perplexity rose" in isscompress.report_markdown(result)
    exact = isscompress.report(model, model, data=data, speed=False, max_tokens=5000)
    assert exact.perplexity_delta == 0 and exact.warnings == []


def test_a_bare_stack_is_reported_on_tokens_without_an_output_gap(tmp_path) -> None:
    """A bare nn.LSTM stack has no vocabulary and its outputs are hidden features (narrower once shrunk): the report
    times it on time steps, as a language model, and shows no output gap (there are no answers to compare)."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, num_layers=2)
    with torch.no_grad():
        for name in ("weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"):
            getattr(lstm, name)[[2, 8, 14, 20]] = 0  # unit 2 of layer 1, all four gates
        lstm.weight_hh_l1[:, 2] = 0
    source, small = tmp_path / "bare.safetensors", tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in lstm.state_dict().items()}, source)
    assert isscompress.shrink(source, small, 0.0).widths_after == {"layer0": 6, "layer1": 5}
    result = runner.invoke(app, ["report", str(source), str(small), "--json", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["output_gap"] is None and [s["workload"] for s in report["speed"]] == ["decode_batch1", "batch20x35"]
