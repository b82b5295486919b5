"""``export``: a shrunk model that runs without isscompress (TorchScript or ONNX), parity-checked.

The exported graph has flat, named inputs and outputs so each layer can keep its own width:
``tokens`` (int64 ``[steps, batch]``; for a bare stack ``features``, float ``[steps, batch, input]``),
then per layer ``h0_layer{l}`` (and ``c0_layer{l}`` for LSTM) of shape ``[directions, batch, width]``;
outputs ``logits`` (``output`` for a bare stack), then ``hn_layer{l}`` (and ``cn_layer{l}``).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..io.files import atomic_write, check_output_path
from ..errors import IsscompressError
from ..io.loading import load_checkpoint
from ..architectures.stack_module import RecurrentModel, probe_inputs

FORMATS = ("torchscript", "onnx")
TOLERANCE = 1e-4


class FlatStateModel(nn.Module):
    """RecurrentModel with one tensor argument per hidden state, for tracing and ONNX."""

    def __init__(self, model: RecurrentModel) -> None:
        super().__init__()
        self.model = model
        self.lstm = model.spec.cell == "LSTM"

    def forward(self, inputs: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        per_layer = 2 if self.lstm else 1
        hidden = [tuple(states[i : i + 2]) if self.lstm else states[i] for i in range(0, len(states), per_layer)]
        output, new_hidden = self.model(inputs, hidden)
        flat: list[Tensor] = [output]
        for state in new_hidden:
            flat.extend(state if self.lstm else (state,))
        return tuple(flat)


def io_names(model: RecurrentModel) -> tuple[list[str], list[str]]:
    lm = model.spec.is_language_model
    inputs, outputs = ["tokens" if lm else "features"], ["logits" if lm else "output"]
    for index in range(len(model.spec.layers)):
        inputs.append(f"h0_layer{index}")
        outputs.append(f"hn_layer{index}")
        if model.spec.cell == "LSTM":
            inputs.append(f"c0_layer{index}")
            outputs.append(f"cn_layer{index}")
    return inputs, outputs


def example_arguments(model: RecurrentModel, steps: int, batch: int, seed: int) -> tuple[Tensor, ...]:
    spec = model.spec
    generator = torch.Generator().manual_seed(seed)
    args = [probe_inputs(spec, steps=steps, batch=batch, seed=seed)]
    for layer in spec.layers:
        args.append(torch.randn(spec.directions, batch, layer.out_size, generator=generator))
        if spec.cell == "LSTM":
            args.append(torch.randn(spec.directions, batch, layer.hidden_size, generator=generator))
    return tuple(args)


@dataclass(frozen=True)
class ExportResult:
    output: Path
    format: str
    max_abs_diff: float
    inputs: list[str]
    outputs: list[str]


def _max_diff(expected: tuple[Tensor, ...], got: list) -> float:
    return max(float((torch.as_tensor(g) - e).abs().max()) for e, g in zip(expected, got))


def _torchscript(wrapper: FlatStateModel, example: tuple[Tensor, ...], probe: tuple[Tensor, ...]) -> tuple[bytes, list]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)  # check what was written, not what is in memory
    with torch.inference_mode():
        got = list(loaded(*probe))
    return buffer.getvalue(), got


def _onnx(wrapper: FlatStateModel, example, probe, names: tuple[list[str], list[str]]) -> tuple[bytes, list]:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it; a missing one fails deep inside torch)
        import onnxruntime
    except ImportError as err:
        raise IsscompressError(f"ONNX export needs onnx and onnxruntime; {err.name} is not installed.",
                               "pip install 'isscompress[onnx]'.") from None
    inputs, outputs = names
    dynamic = {name: ({0: "steps", 1: "batch"} if i == 0 else {1: "batch"}) for i, name in enumerate(inputs)}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: the dynamo exporter fixed the sequence length of the LSTM.
        torch.onnx.export(wrapper, example, buffer, dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=17)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: tensor.numpy() for name, tensor in zip(inputs, probe)})
    return buffer.getvalue(), got


def export_model(
    source: str | os.PathLike, output: str | os.PathLike, fmt: str, *, force: bool = False
) -> ExportResult:
    """Export ``source`` as TorchScript or ONNX; refuse to write when outputs differ on a probe batch."""
    if fmt not in FORMATS:
        raise IsscompressError(f"Unknown export format '{fmt}'.", f"Use one of: {', '.join(FORMATS)}.")
    output = check_output_path(output, force=force, inputs=(Path(source),))
    model = load_checkpoint(source).model().float()
    if fmt == "onnx" and any(layer.proj_size for layer in model.spec.layers):
        raise IsscompressError(
            f"{Path(source).name} is an LSTM with projections (proj_size), which ONNX's LSTM operator cannot express.",
            "Export it with --format torchscript.")
    wrapper = FlatStateModel(model).eval()
    names = io_names(model)
    example = example_arguments(model, steps=5, batch=2, seed=0)
    probe = example_arguments(model, steps=7, batch=3, seed=1)  # other sizes: the graph must not fix them
    with torch.inference_mode():
        expected = wrapper(*probe)
    data, got = _torchscript(wrapper, example, probe) if fmt == "torchscript" else _onnx(wrapper, example, probe, names)
    diff = _max_diff(expected, got)
    if not diff <= TOLERANCE:
        raise IsscompressError(f"The exported {fmt} model differs from the PyTorch model by {diff:.3g} on a probe "
                               f"batch (tolerance {TOLERANCE}); nothing was written.",
                               "Please report this with the checkpoint's layout.")
    atomic_write(output, lambda temporary: temporary.write_bytes(data))
    return ExportResult(output, fmt, diff, *names)
