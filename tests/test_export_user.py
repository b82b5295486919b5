"""export --arch: a shrunk user model as TorchScript and ONNX that run without isscompress (#33).

The files are read back by the runtimes a deployer uses (torch.jit.load, ONNX Runtime) and compared with the shrunk
model on inputs of a shape neither the trace nor the check saw."""

from __future__ import annotations

import sys
from pathlib import Path

import onnxruntime
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.errors import IsscompressError
from isscompress.io.loading import as_checkpoint

from test_real_examples import LID_FACTORY, REAL  # the languageidentifier stand-in's factory

runner = CliRunner()


@pytest.fixture(scope="module")
def shrunk_lid(tmp_path_factory) -> tuple[Path, str]:
    """The languageidentifier stand-in (one 2-layer BiLSTM) split into layers, fine-tuned under half the
    multiply-adds with the defaults, and shrunk: its layers end at widths of their own."""
    tmp = tmp_path_factory.mktemp("lid")
    sys.path.insert(0, str(REAL / "languageidentifier"))
    from lid import CharBiLSTMClassifier

    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in CharBiLSTMClassifier(12, 6, 8, 2, 3).state_dict().items()},
              str(tmp / "lid.safetensors"))
    (tmp / "lid_arch.py").write_text(LID_FACTORY.format(folder=REAL / "languageidentifier"))
    arch = f"{tmp / 'lid_arch.py'}:make"
    (tmp / "r.yaml").write_text("finetune: {epochs: 2, lr: 0.01, optimizer: adam, seed: 1}\n"
                                "iss: {target: {macs: 0.5}, split_layers: true}\ndistill: {alpha: 1.0}\n")
    for args in (["finetune", str(tmp / "lid.safetensors"), "--arch", arch, "-r", str(tmp / "r.yaml"), "-o",
                  str(tmp / "tuned.safetensors")],
                 ["shrink", str(tmp / "tuned.safetensors"), "--arch", arch, "-o", str(tmp / "small.safetensors")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return tmp / "small.safetensors", arch


def test_the_split_stand_in_met_its_budget_with_layers_of_their_own(shrunk_lid) -> None:
    small, arch = shrunk_lid
    opened = as_checkpoint(small, arch=arch)
    layers = opened.model().lstm.layers
    assert opened.metadata.spec["split"] == ["lstm"] and len(layers) == 2
    assert all(layer.hidden_size < 8 for layer in layers)
    assert layers[1].input_size == 2 * layers[0].hidden_size


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_shrunk_user_model_exports_and_runs_in_its_runtime_as_the_shrunk_model_does(shrunk_lid, tmp_path, fmt):
    small, arch = shrunk_lid
    out = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    result = runner.invoke(app, ["export", str(small), "--arch", arch, "-f", fmt, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "inputs: input0" in result.output and "outputs: output0" in result.output
    model = as_checkpoint(small, arch=arch).model().eval()
    chars = torch.randint(1, 12, (5, 13), generator=torch.Generator().manual_seed(7))  # a shape not traced
    with torch.no_grad():
        expected = model(chars)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input0": chars.numpy()})[0])
    else:
        got = torch.jit.load(str(out))(chars)[0]
    assert got.shape == expected.shape == (5, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_export_of_a_user_model_refuses_what_it_cannot_write(shrunk_lid, tmp_path) -> None:
    small, arch = shrunk_lid
    with pytest.raises(IsscompressError, match="int8 export is for isscompress's language-model stacks"):
        isscompress.export(small, tmp_path / "q.pt", "torchscript", quantize="int8", arch=arch)
    assert not (tmp_path / "q.pt").exists()
    # a forward whose output depends on the input's length through Python: the trace fixes it, the check sees it
    (tmp_path / "loop.py").write_text(
        "import torch\nfrom torch import nn\n\nclass Steps(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.cell = nn.GRUCell(3, 4)\n        self.out = nn.Linear(4, 2)\n\n"
        "    def forward(self, x):\n        h = torch.zeros(x.shape[1], 4)\n"
        "        for t in range(int(x.shape[0])):\n            h = self.cell(x[t], h)\n        return self.out(h)\n\n"
        "def make():\n    torch.manual_seed(0)\n"
        "    return Steps(), (torch.randn(5, 2, 3),), [(torch.randn(9, 2, 3),)]\n")
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("loop_model", tmp_path / "loop.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    save_file({k: v.contiguous() for k, v in module.make()[0].state_dict().items()}, str(tmp_path / "loop.st"))
    result = runner.invoke(app, ["export", str(tmp_path / "loop.st"), "--arch", f"{tmp_path / 'loop.py'}:make",
                                 "-f", "torchscript", "-o", str(tmp_path / "loop.pt")])
    assert result.exit_code == 1 and "differs from the PyTorch model" in result.output
    assert "the example inputs and the first batch" in result.output and not (tmp_path / "loop.pt").exists()
