"""ONNX in, ONNX out: a graph whose recurrent layers are ONNX LSTM/GRU/RNN operators is opened as its layers' ISS
groups, shrunk into a smaller .onnx that ONNX Runtime runs, checked against the original with the removed units
zeroed; what cannot be followed is refused by name. The graphs are made by torch.onnx.export, as a user's are."""

from __future__ import annotations

import io
import warnings
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app

runner = CliRunner()


class Tagger(nn.Module):
    """Features -> a recurrent layer -> a per-step head, as OCR and tagging models end."""

    def __init__(self, cell: type = nn.LSTM, bidirectional: bool = True, hidden: int = 7, flat: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.rnn = cell(6, hidden, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 3)
        self.flat = flat

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.inp(x)))
        if self.flat:  # (T*B, features) into the head, as ddddocr's graph does before its Gemm
            return self.head(y.reshape(-1, y.shape[-1]))
        return self.head(y)


def exported(model: nn.Module, path, opset: int = 17) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(4, 2, 5),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "T", 1: "B"}})
    path.write_bytes(buffer.getvalue())


def run(path, x: np.ndarray) -> np.ndarray:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def masked_copy(checkpoint, keep: int, path):
    norms = isscompress.all_unit_norms(checkpoint.state, checkpoint.group_sets)
    kept = {name: n.argsort(descending=True)[:keep].sort().values for name, n in norms.items()}
    masked = isscompress.mask_state_dict(checkpoint.state, checkpoint.group_sets, kept)
    return isscompress.save_checkpoint(replace(checkpoint, state=masked), path)


CASES = [(nn.LSTM, True, False, 17), (nn.GRU, True, True, 17), (nn.RNN, False, False, 17), (nn.LSTM, False, True, 12),
         (nn.GRU, False, False, 12)]


@pytest.mark.parametrize("cell,bidirectional,flat,opset", CASES)
def test_an_exported_recurrent_graph_shrinks_to_a_smaller_onnx_that_computes_what_the_masked_one_does(
        tmp_path, cell, bidirectional, flat, opset) -> None:
    torch.manual_seed(0)
    source = tmp_path / "model.onnx"
    exported(Tagger(cell, bidirectional, flat=flat), source, opset)
    checkpoint = isscompress.load_checkpoint(source)
    directions = 2 if bidirectional else 1
    assert [(gs.size, gs.same_width_as) for gs in checkpoint.group_sets] == [(7, checkpoint.spec.layers[0].node)] * \
        directions
    masked = masked_copy(checkpoint, 4, tmp_path / "masked.onnx")
    result = isscompress.shrink(masked.path, tmp_path / "small.onnx")
    assert set(result.widths_after.values()) == {4} and result.checked and result.max_abs_diff <= result.tolerance
    small = onnx.load(str(tmp_path / "small.onnx"))
    (node,) = [n for n in small.graph.node if n.op_type == cell.__name__.replace("nn.", "")]
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "hidden_size")) == 4
    for steps, batch in ((4, 2), (9, 3)):  # another length and batch than the probe's: nothing fixed them
        x = np.random.default_rng(steps).standard_normal((steps, batch, 5)).astype(np.float32)
        assert np.abs(run(masked.path, x) - run(tmp_path / "small.onnx", x)).max() < 1e-5
    weights = [sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(f)).graph.initializer)
               for f in (source, tmp_path / "small.onnx")]
    assert weights[1] < weights[0]  # (a tiny file gains more from isscompress's record than it loses in weights)
    reopened = isscompress.load_checkpoint(tmp_path / "small.onnx")
    assert [gs.size for gs in reopened.group_sets] == [4] * directions
    assert result.checkpoint.group_sets == reopened.group_sets
    assert reopened.metadata.lineage and reopened.metadata.stage == "shrink"


def test_the_cli_inspects_shrinks_and_reports_an_onnx_graph(tmp_path) -> None:
    torch.manual_seed(0)
    exported(Tagger(), tmp_path / "model.onnx")
    masked = masked_copy(isscompress.load_checkpoint(tmp_path / "model.onnx"), 3, tmp_path / "masked.onnx")
    shown = runner.invoke(app, ["inspect", str(masked.path)])
    assert shown.exit_code == 0 and "an ONNX graph's recurrent layers" in shown.stdout, shown.output
    shrunk = runner.invoke(app, ["shrink", str(masked.path), "-o", str(tmp_path / "small.onnx")])
    assert shrunk.exit_code == 0, shrunk.output
    wrong = runner.invoke(app, ["shrink", str(masked.path), "-o", str(tmp_path / "small.safetensors")])
    assert wrong.exit_code == 1 and "small.onnx" in " ".join(wrong.stderr.split())
    report = runner.invoke(app, ["report", str(tmp_path / "model.onnx"), str(tmp_path / "small.onnx"), "--json",
                                 "--repeats", "2"])
    assert report.exit_code == 0, report.output
    import json

    data = json.loads(report.stdout)
    assert data["widths"] == {name: [7, 3] for name in data["widths"]} and data["speed"][0]["unit"] == "calls"
    (tmp_path / "r.yaml").write_text("iss: {target: {macs: 0.5}}\n")
    refused = runner.invoke(app, ["finetune", str(tmp_path / "model.onnx"), "-r", str(tmp_path / "r.yaml"), "-o",
                                  str(tmp_path / "t.onnx")])
    assert refused.exit_code == 1 and "ONNX" in refused.stderr and "Traceback" not in refused.output
    scored = runner.invoke(app, ["eval", str(tmp_path / "small.onnx"), "--data", str(tmp_path / "r.yaml")])
    assert scored.exit_code == 1 and "not a language model" in " ".join(scored.stderr.split())
    again = runner.invoke(app, ["export", str(tmp_path / "small.onnx"), "-o", str(tmp_path / "e.onnx"), "-f", "onnx"])
    assert again.exit_code == 1 and "already" in " ".join(again.stderr.split())


class Activated(nn.Module):
    """A head reading tanh of the layer's output through a dropout (kept in the graph in training mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.drop, self.head = nn.GRU(5, 6), nn.Dropout(0.0), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.drop(torch.tanh(self.rnn(x)[0])))


def test_elementwise_operations_that_keep_zero_zero_are_followed_and_others_refused(tmp_path) -> None:
    torch.manual_seed(0)
    exported(Activated(), tmp_path / "model.onnx")
    masked = masked_copy(isscompress.load_checkpoint(tmp_path / "model.onnx"), 3, tmp_path / "masked.onnx")
    isscompress.shrink(masked.path, tmp_path / "small.onnx")
    x = np.random.default_rng(1).standard_normal((6, 2, 5)).astype(np.float32)
    assert np.abs(run(masked.path, x) - run(tmp_path / "small.onnx", x)).max() < 1e-5
    graph = onnx.load(str(tmp_path / "model.onnx"))
    next(n for n in graph.graph.node if n.op_type == "Tanh").op_type = "Sigmoid"  # sigmoid(0) = 1/2: not exact
    onnx.save(graph, str(tmp_path / "sigmoid.onnx"))
    refused = runner.invoke(app, ["inspect", str(tmp_path / "sigmoid.onnx")])
    assert refused.exit_code == 1 and "reaches Sigmoid" in " ".join(refused.stderr.split())


class LastState(nn.Module):
    """A classifier of the final hidden state, as sentence classifiers read it (ONNX: Y_h, then Gather; both
    directions' last states concatenated beside the mean of the input features, when bidirectional)."""

    def __init__(self, cell: type = nn.LSTM, bidirectional: bool = False) -> None:
        super().__init__()
        self.rnn = cell(5, 6, bidirectional=bidirectional)
        self.bidirectional = bidirectional
        self.head = nn.Linear(17 if bidirectional else 6, 3)

    def forward(self, x):
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state
        if self.bidirectional:
            return self.head(torch.cat([x.mean(0), h[-2], h[-1]], dim=-1))
        return self.head(h[-1])


@pytest.mark.parametrize("cell,bidirectional", [(nn.LSTM, False), (nn.GRU, False), (nn.LSTM, True)])
def test_a_graph_that_reads_the_final_state_shrinks_through_it(tmp_path, cell, bidirectional) -> None:
    torch.manual_seed(0)
    exported(LastState(cell, bidirectional), tmp_path / "model.onnx")
    checkpoint = isscompress.load_checkpoint(tmp_path / "model.onnx")
    (reader,) = checkpoint.spec.layers[0].readers  # the head, reached through the final state
    assert reader.axis == 1 and reader.starts == ((5, 11) if bidirectional else (0,))  # after the 5 mean features
    masked = masked_copy(checkpoint, 2, tmp_path / "masked.onnx")
    result = isscompress.shrink(masked.path, tmp_path / "small.onnx")
    assert set(result.widths_after.values()) == {2}
    reopened = isscompress.load_checkpoint(tmp_path / "small.onnx")
    assert result.checkpoint.group_sets == reopened.group_sets  # the shrunk graph's readers, in memory as on disk
    x = np.random.default_rng(0).standard_normal((7, 3, 5)).astype(np.float32)
    assert np.abs(run(masked.path, x) - run(tmp_path / "small.onnx", x)).max() < 1e-5


def _with_node(path, edit) -> None:
    model = onnx.load(str(path))
    edit(model.graph)
    onnx.save(model, str(path))


def test_what_cannot_be_followed_is_refused_by_name(tmp_path) -> None:
    torch.manual_seed(0)
    base = tmp_path / "model.onnx"
    exported(Tagger(), base)

    def reads_final_state(graph):
        lstm = next(n for n in graph.node if n.op_type == "LSTM")
        graph.output.append(helper.make_tensor_value_info(lstm.output[1], onnx.TensorProto.FLOAT, None))

    def quantised(graph):
        graph.node.append(helper.make_node("DynamicQuantizeLSTM", ["x"], ["q"], domain="com.microsoft"))

    def other_reader(graph):
        lstm = next(n for n in graph.node if n.op_type == "LSTM")
        graph.node.append(helper.make_node("Softmax", [lstm.output[0]], ["s"]))
        graph.output.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, None))

    def peepholes(graph):
        lstm = next(n for n in graph.node if n.op_type == "LSTM")
        graph.initializer.append(numpy_helper.from_array(np.zeros((2, 21), np.float32), "P"))
        lstm.input.extend(["P"])

    cases = {"reads_final_state": (reads_final_state, "is a graph output"),
             "quantised": (quantised, "quantised recurrent layer"),
             "other_reader": (other_reader, "reaches Softmax"), "peepholes": (peepholes, "peephole")}
    for name, (edit, said) in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(base.read_bytes())
        _with_node(path, edit)
        result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 1 and said in " ".join(result.stderr.split()), (name, result.output)
        assert str(path.name) in result.stderr and "Traceback" not in result.output
    outside = tmp_path / "outside.onnx"
    model = onnx.load(str(base))
    onnx.save(model, str(outside), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    result = runner.invoke(app, ["inspect", str(outside)])
    assert result.exit_code == 1 and "external data" in " ".join(result.stderr.split())
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    (tmp_path / "cut.onnx").write_bytes(base.read_bytes()[: base.stat().st_size // 2])
    lying = onnx.load(str(base))
    next(t for t in lying.graph.initializer if len(t.dims) == 3).dims[1] = 99999  # a W that says it is larger
    onnx.save(lying, str(tmp_path / "lying.onnx"))
    for name in ("junk.onnx", "cut.onnx", "lying.onnx"):
        result = runner.invoke(app, ["inspect", str(tmp_path / name)])
        assert result.exit_code == 1 and name in result.stderr and "Traceback" not in result.output, result.output
