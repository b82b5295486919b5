"""int8 after shrinking: a smaller TorchScript file whose perplexity is checked against float32 on real text."""

from __future__ import annotations

import pytest
import torch
from conftest import EXCERPT, PTB, PTB_MODEL
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.errors import IsscompressError
from isscompress.verbs.export import export

runner = CliRunner()


def test_int8_export_is_smaller_and_keeps_the_perplexity(tmp_path, small_lm):
    fp32 = export(small_lm, None, "torchscript")
    out = tmp_path / "int8.pt"
    result = runner.invoke(app, ["export", str(small_lm), "-f", "torchscript", "--quantize", "int8", "-o", str(out),
                                 "--data", str(EXCERPT / "valid.txt"), "--max-increase", "5"])
    assert result.exit_code == 0, result.output
    assert "perplexity float32" in result.stdout
    assert out.stat().st_size < len(fp32.data)
    loaded = torch.jit.load(str(out))
    tokens = torch.randint(0, isscompress.load_checkpoint(small_lm).spec.vocab_size, (6, 2))
    states = [torch.zeros(1, 2, w) for w in (24, 24, 20, 20)]
    logits, *_ = loaded(tokens, *states)
    with torch.no_grad():  # the float32 model on the same tokens: int8 moves the logits a little, not the ranking
        reference, _ = isscompress.load(small_lm).eval()(tokens)
    assert logits.shape == reference.shape
    assert float((logits - reference).abs().max()) < 0.1 * float(reference.std())
    assert float((logits.argmax(-1) == reference.argmax(-1)).float().mean()) >= 0.75


def test_int8_that_costs_too_much_perplexity_is_refused_and_not_written(tmp_path, small_lm):
    out = tmp_path / "int8.pt"
    with pytest.raises(IsscompressError, match="raises the perplexity"):
        export(small_lm, out, "torchscript", quantize="int8", data=EXCERPT / "valid.txt", max_increase=-50)
    assert not out.exists()


def test_onnx_int8_through_onnx_runtimes_quantiser(small_lm):
    pytest.importorskip("onnxruntime")
    fp32 = export(small_lm, None, "onnx")
    result = export(small_lm, None, "onnx", quantize="int8", data=EXCERPT / "valid.txt", max_increase=5)
    assert len(result.data) < len(fp32.data)
    assert result.perplexity[1] <= result.perplexity[0] * 1.05 and result.probe_kl < 0.05


def test_int8_is_refused_where_it_does_not_apply(tmp_path, small_lm):
    with pytest.raises(IsscompressError, match="Unknown quantisation"):
        export(small_lm, None, "torchscript", quantize="int4")
    spec = isscompress.ModelSpec("LSTM", (isscompress.LayerSpec(5, 8, proj_size=4),), vocab_size=11)
    projected = isscompress.Checkpoint(spec, isscompress.RecurrentModel(spec).canonical_state(), "isscompress")
    with pytest.raises(IsscompressError, match="proj_size"):
        export(projected, None, "torchscript", quantize="int8")


@pytest.mark.skipif(not (PTB_MODEL / "model.safetensors").exists(), reason="needs ../shared/models")
def test_int8_on_the_shared_ptb_model_within_one_percent(tmp_path):
    """The issue's goal, measured: >= 3.5x smaller than float32, perplexity change <= +1% (first 20k tokens)."""
    text = tmp_path / "test.txt"
    text.write_text("".join((PTB / "ptb.test.txt").read_text().splitlines(keepends=True)[:900]))
    source = PTB_MODEL / "model.safetensors"
    result = export(source, None, "torchscript", quantize="int8", data=text, max_increase=1.0)
    assert source.stat().st_size / len(result.data) >= 3.5
    assert result.perplexity[1] <= result.perplexity[0] * 1.01


def test_report_int8_column(tmp_path, small_lm):
    small = isscompress.shrink(small_lm, threshold=0.6).checkpoint
    result = isscompress.report(small_lm, small, data=EXCERPT / "valid.txt", repeats=1, int8=True)
    q = result.to_dict()["int8"]
    assert q["bytes"] < result.original.file_bytes / 2
    assert abs(q["perplexity"]["perplexity"] - result.perplexity_after.perplexity) < 0.05 * result.perplexity_after.perplexity
    assert {s["workload"] for s in q["speed"]} == {"decode_batch1", "batch20x35"}
    assert "int8 (shrunk): size" in isscompress.report_markdown(result)
    assert result.to_dict()["file_size_ratio"] is None  # the shrunk checkpoint lives in memory: no file to compare


@pytest.mark.parametrize("path", ["torchscript", "onnxruntime"])
def test_report_times_the_runtime_asked_for(small_lm, path):
    if path == "onnxruntime":
        pytest.importorskip("onnxruntime")
    small = isscompress.shrink(small_lm, threshold=0.6).checkpoint
    result = isscompress.report(small_lm, small, repeats=1, speed_path=path)
    assert {s.path for s in result.speed} == {path}
    assert f"({path})" in isscompress.report_markdown(result)
    with pytest.raises(IsscompressError, match="Unknown speed path"):
        isscompress.report(small_lm, small, repeats=1, speed_path="tensorrt")
