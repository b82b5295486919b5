"""The runtimes a deployer would choose, behind a stack model's ``forward(inputs, hidden)``.

So that one perplexity loop and one speed measurement serve them all: PyTorch eager (the model itself),
a traced TorchScript module, and ONNX Runtime running the exported ONNX file. Each wraps the flat-state
calling convention of :mod:`.flat`.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import Tensor, nn

from ..errors import IsscompressError
from ..onnx_runtime import missing_onnx, ort_session, require_onnx
from .flat import FlatStateModel, StateModel, example_arguments, io_names

PATHS = ("eager", "torchscript", "onnxruntime")


def onnx_bytes(model: StateModel) -> bytes:
    """``model`` exported to ONNX with dynamic steps and batch (PyTorch's TorchScript-based exporter: the dynamo
    exporter fixed the LSTM's sequence length with torch 2.13)."""
    require_onnx()
    if any(layer.proj_size for layer in model.spec.layers):
        raise IsscompressError("An LSTM with projections (proj_size) cannot be expressed by ONNX's LSTM operator.",
                               "Use TorchScript for it.")
    inputs, outputs = io_names(model)
    dynamic = {name: ({0: "steps", 1: "batch"} if i == 0 else {1: "batch"}) for i, name in enumerate(inputs)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FlatStateModel(model).eval(), example_arguments(model, 5, 2, 0), buffer, dynamo=False,
                          input_names=inputs, output_names=outputs, dynamic_axes=dynamic, opset_version=17)
    return buffer.getvalue()


class _FlatRuntime(nn.Module):
    """``forward(inputs, hidden)`` over a callable taking and returning flat tensors."""

    def __init__(self, like: StateModel) -> None:
        super().__init__()
        self.spec = like.spec
        self.states = len(like.spec.cell_kind.states)

    def call(self, *flat: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, inputs: Tensor, hidden=None):
        if hidden is None:
            hidden = [tuple(torch.zeros(self.spec.directions, inputs.shape[1], w) for w in
                            self.spec.cell_kind.state_widths(layer)) for layer in self.spec.layers]
        flat = [inputs] + [s for state in hidden for s in (state if isinstance(state, tuple) else (state,))]
        out = self.call(*flat)
        n = self.states
        states = [tuple(out[1 + i:1 + i + n]) if n > 1 else out[1 + i] for i in range(0, len(out) - 1, n)]
        return out[0], states


class OnnxRuntimeModel(_FlatRuntime):
    """An ONNX model (bytes) in ONNX Runtime, on this process's CPU threads."""

    def __init__(self, model_bytes: bytes, like: StateModel) -> None:
        super().__init__(like)
        self.session = ort_session(model_bytes)
        self.names = [i.name for i in self.session.get_inputs()]

    def call(self, *flat: Tensor) -> list[Tensor]:
        arrays = self.session.run(None, {n: t.numpy() for n, t in zip(self.names, flat)})
        return [torch.from_numpy(a) for a in arrays]


class TorchScriptModel(_FlatRuntime):
    """``model`` traced to TorchScript (what ``isscompress export -f torchscript`` writes)."""

    def __init__(self, model: nn.Module, like: StateModel | None = None) -> None:
        like = like if like is not None else model
        super().__init__(like)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.traced = torch.jit.trace(FlatStateModel(model).eval(), example_arguments(like, 5, 2, 0))

    def call(self, *flat: Tensor) -> list[Tensor]:
        return list(self.traced(*flat))


def runtime(model: StateModel, path: str) -> nn.Module:
    """``model`` on the named runtime (``eager`` returns it unchanged)."""
    if path == "eager":
        return model
    if path == "torchscript":
        return TorchScriptModel(model)
    if path == "onnxruntime":
        return OnnxRuntimeModel(onnx_bytes(model), model)
    raise IsscompressError(f"Unknown speed path '{path}'.", f"Use one of: {', '.join(PATHS)}, or auto.")


def default_path(model: StateModel) -> str:
    """The fastest float32 path measured (docs/results.md, speed benchmark): ONNX Runtime at batch 1 and at a batch
    for 2x200 to 2x1500 LSTMs on CPU, when it is installed and ONNX can express the model (PyTorch's own cells,
    no projection); PyTorch eager otherwise."""
    spec = model.spec
    if missing_onnx() or not spec.cell_kind.onnx or any(layer.proj_size for layer in spec.layers):
        return "eager"
    return "onnxruntime"
