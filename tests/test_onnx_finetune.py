"""Fine-tuning a model that ships only as ONNX: its graph runs as a PyTorch module (isscompress.OnnxModule, checked
against ONNX Runtime), fine-tunes with the recipe's ISS like any --arch model, and is written back into the same
graph, which `shrink` then makes smaller. The graphs are made by torch.onnx.export, as a user's are."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import helper
from torch import nn
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.errors import CheckpointError
from test_onnx import Tagger, exported

runner = CliRunner()
FACTORY = '''
import torch
import isscompress

def make():
    model = isscompress.onnx_module(__file__.replace("task.py", "model.onnx"))
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 4, 5, generator=generator),) for _ in range(6)]
    return model, (torch.randn(6, 2, 5, generator=generator),), batches
'''


@pytest.mark.parametrize("cell,bidirectional,flat,opset", [(nn.LSTM, True, False, 17), (nn.GRU, False, True, 12)])
def test_the_module_computes_what_onnx_runtime_computes_and_writes_back_the_same_graph(
        tmp_path, cell, bidirectional, flat, opset) -> None:
    torch.manual_seed(0)
    exported(Tagger(cell, bidirectional, flat=flat), tmp_path / "model.onnx", opset)
    module = isscompress.onnx_module(tmp_path / "model.onnx")  # refused past float32 tolerance of ONNX Runtime
    x = torch.randn(5, 3, 5)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        assert np.abs(module(x).numpy() - session.run(None, {"x": x.numpy()})[0]).max() < 1e-5
    original, back = onnx.load(str(tmp_path / "model.onnx")), module.to_onnx()
    for a, b in zip(original.graph.initializer, back.graph.initializer):  # gates back in ONNX's order
        assert np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
    plan = isscompress.discover(module, (x,))
    assert [gs.size for gs in plan.group_sets] == [7] * (2 if bidirectional else 1)


class Reader(nn.Module):
    """ddddocr's shape, small: convolutions (with a norm and x * sigmoid(x)) over an image, its columns as steps into
    a bidirectional LSTM, a per-step classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.SiLU(), nn.MaxPool2d(2))
        self.rnn = nn.LSTM(4 * 4, 6, bidirectional=True)
        self.head = nn.Linear(12, 5)

    def forward(self, image):
        x = self.conv(image[..., 1:])  # [batch, 4, 4, (width - 1) / 2]; the first column cut (a Slice)
        x = x.permute(3, 0, 1, 2).reshape(x.shape[3], x.shape[0], -1)
        y, _ = self.rnn(x)
        return self.head(y.reshape(-1, y.shape[-1])).reshape(y.shape[0], y.shape[1], -1)


def test_a_convolutional_front_runs_as_onnx_runtime_runs_it_and_its_units_are_found(tmp_path) -> None:
    torch.manual_seed(0)
    model = Reader().eval()
    model.conv[1].running_mean.uniform_(-1, 1), model.conv[1].running_var.uniform_(0.5, 2)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 1, 8, 11),), buffer, dynamo=False, opset_version=12,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "B", 3: "W"}},
                          training=torch.onnx.TrainingMode.PRESERVE)  # the norm kept, not folded into the conv
    (tmp_path / "reader.onnx").write_bytes(buffer.getvalue())
    ops = {n.op_type for n in onnx.load(str(tmp_path / "reader.onnx")).graph.node}
    assert {"Conv", "BatchNormalization", "Sigmoid", "Mul", "MaxPool", "Slice", "LSTM", "Gemm"} <= ops
    module = isscompress.onnx_module(tmp_path / "reader.onnx")
    image = torch.randn(3, 1, 8, 15)
    with torch.no_grad():
        assert (module(image) - model(image)).abs().max() < 1e-5
    assert set(dict(module.named_buffers())) and all("running" not in k for k, _ in module.named_parameters())
    plan = isscompress.discover(module, (image,))
    assert [gs.size for gs in plan.group_sets] == [6, 6]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 1, 8, 11),), buffer, dynamo=False, opset_version=12,
                          input_names=["x"], output_names=["y"], do_constant_folding=False)
    (tmp_path / "unfolded.onnx").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="computes its weights .* instead of holding them as initializers"):
        isscompress.onnx_module(tmp_path / "unfolded.onnx")


def test_an_onnx_graph_fine_tunes_to_an_onnx_with_zeroed_units_that_shrink_makes_smaller(tmp_path) -> None:
    torch.manual_seed(0)
    exported(Tagger(nn.LSTM, True), tmp_path / "model.onnx")
    (tmp_path / "task.py").write_text(FACTORY)
    (tmp_path / "recipe.yaml").write_text("finetune: {epochs: 3, lr: 0.01, optimizer: adam, seed: 0}\n"
                                          "iss: {target: {macs: 0.5}}\n")
    tuned, small = tmp_path / "tuned.onnx", tmp_path / "small.onnx"
    result = runner.invoke(app, ["finetune", str(tmp_path / "model.onnx"), "--arch", f"{tmp_path / 'task.py'}:make",
                                 "-r", str(tmp_path / "recipe.yaml"), "-o", str(tuned)])
    assert result.exit_code == 0, result.output
    opened = isscompress.load_checkpoint(tuned)  # an ONNX graph again, holding the fine-tuned weights
    norms = isscompress.all_unit_norms(opened.state, opened.group_sets)
    assert all(int((n == 0).sum()) > 0 for n in norms.values())  # the schedule zeroed whole units
    assert [m for m in opened.metadata.lineage][-1]["stage"] == "finetune"
    result = runner.invoke(app, ["shrink", str(tuned), "-o", str(small)])
    assert result.exit_code == 0, result.output
    shrunk = isscompress.shrink(tuned)  # checked in ONNX Runtime against the tuned graph (whose removed units are 0)
    assert shrunk.max_abs_diff <= shrunk.tolerance and shrunk.original_max_abs_diff <= shrunk.tolerance
    assert max(shrunk.widths_after.values()) < 7
    x = np.random.default_rng(0).normal(size=(4, 2, 5)).astype("float32")
    outputs = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
               for p in (tuned, small)]
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-5


def test_what_cannot_be_fine_tuned_is_refused_by_name(tmp_path) -> None:
    exported(Tagger(nn.LSTM, True), tmp_path / "model.onnx")
    (tmp_path / "recipe.yaml").write_text("iss: {target: {macs: 0.5}}\n")
    result = runner.invoke(app, ["finetune", str(tmp_path / "model.onnx"), "-r", str(tmp_path / "recipe.yaml"),
                                 "-o", str(tmp_path / "t.onnx")])
    assert result.exit_code != 0 and "needs --arch FILE.py:FACTORY whose model is isscompress.onnx_module" in \
        result.output
    (tmp_path / "task.py").write_text(FACTORY)
    result = runner.invoke(app, ["finetune", str(tmp_path / "model.onnx"), "--arch", f"{tmp_path / 'task.py'}:make",
                                 "-r", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "t.safetensors")])
    assert result.exit_code != 0 and ".onnx" in result.output and not (tmp_path / "t.safetensors").exists()
    model = onnx.load(str(tmp_path / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "Relu")
    node.op_type = "Erf"  # an operator the importer does not run
    onnx.save(model, str(tmp_path / "erf.onnx"))
    with pytest.raises(CheckpointError, match="its operators Erf are not among those"):
        isscompress.onnx_module(tmp_path / "erf.onnx")
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm.attribute.append(helper.make_attribute("clip", 3.0))
    node.op_type = "Relu"
    onnx.save(model, str(tmp_path / "clip.onnx"))
    with pytest.raises(CheckpointError, match="has clip, which PyTorch's LSTM does not compute"):
        isscompress.onnx_module(tmp_path / "clip.onnx")
