"""``export``: a shrunk model that runs without isscompress (TorchScript or ONNX), parity-checked.

The exported graph has flat, named inputs and outputs so each layer can keep its own width:
``tokens`` (int64 ``[steps, batch]``; for a bare stack ``features``, float ``[steps, batch, input]``),
then per layer ``h0_layer{l}`` (and ``c0_layer{l}`` for LSTM) of shape ``[directions, batch, width]``;
outputs ``logits`` (``output`` for a bare stack), then ``hn_layer{l}`` (and ``cn_layer{l}``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..deploy.flat import FlatStateModel, StateModel, example_arguments, io_names
from ..deploy.readback import TOLERANCE, largest_difference, torchscript_written
from ..errors import IsscompressError
from ..outputs import atomic_write, check_output_path
from ..io.loading import Checkpoint, as_checkpoint, is_onnx, source_files
from ..architectures.traced import TracedModel

FORMATS = ("torchscript", "onnx")


@dataclass(frozen=True)
class ExportResult:
    output: Path | None
    format: str
    max_abs_diff: float  # the written model against the in-memory one it was made from (int8 against int8)
    inputs: list[str]
    outputs: list[str]
    data: bytes = field(repr=False, default=b"")  # the exported file's bytes
    quantize: str | None = None
    probe_kl: float | None = None  # int8: KL of its next-token distributions from float32's, on a probe batch
    perplexity: tuple[float, float] | None = None  # int8 with data: float32's and int8's perplexity


def _probe_kl(reference: tuple[Tensor, ...], quantized: tuple[Tensor, ...]) -> float:
    from ..training.objectives import distillation_divergence

    return float(distillation_divergence(torch.as_tensor(quantized[0]), reference[0], 1.0))


def _quantized_perplexity(checkpoint: Checkpoint, model: nn.Module, quantized: nn.Module,
                          data: Path) -> tuple[float, float]:
    from ..measure.perplexity import perplexity
    from ..recipe import DataSection, EvaluateSection
    from .preparation import resolve_vocabulary, token_batches

    settings = EvaluateSection()
    level = checkpoint.metadata.level or "word"
    vocabulary, _ = resolve_vocabulary(checkpoint, DataSection(test=Path(data), level=level))
    batches = token_batches(Path(data), vocabulary, settings.batch_size, level=level)
    return tuple(perplexity(m, batches, settings.bptt, level=level).perplexity for m in (model, quantized))


def _torchscript(wrapper: FlatStateModel, example: tuple[Tensor, ...], probe: tuple[Tensor, ...]) -> tuple[bytes, list]:
    payload, loaded = torchscript_written(wrapper, example)
    with torch.inference_mode():
        return payload, list(loaded(*probe))


def _onnx(model: StateModel, probe) -> tuple[bytes, list]:
    from ..deploy.runtimes import OnnxRuntimeModel, onnx_bytes

    data = onnx_bytes(model)
    return data, OnnxRuntimeModel(data, model).call(*probe)


def _refuse_projections(fmt: str, checkpoint: Checkpoint, model: torch.nn.Module) -> None:
    if fmt == "onnx" and any(layer.proj_size for layer in model.spec.layers):
        raise IsscompressError(
            f"{checkpoint.name} is an LSTM with projections (proj_size), which ONNX's LSTM operator cannot express.",
            "Export it with --format torchscript.")


def _int8_quality(result: ExportResult, checkpoint: Checkpoint, model: torch.nn.Module, quantized: torch.nn.Module,
                  data: str | os.PathLike | None, max_increase: float, probe_kl: float) -> ExportResult:
    """The int8 model's KL on the probe, and with ``data`` both perplexities; an increase above ``max_increase``
    percent is refused."""
    perplexities = _quantized_perplexity(checkpoint, model, quantized, Path(data)) if data is not None else None
    if perplexities is not None and perplexities[1] > perplexities[0] * (1 + max_increase / 100):
        raise IsscompressError(
            f"int8 raises the perplexity on {data} from {perplexities[0]:.2f} to {perplexities[1]:.2f} "
            f"(more than {max_increase}%); nothing was written.",
            "Export in float32, or allow more with --max-increase.")
    return replace(result, probe_kl=probe_kl, perplexity=perplexities)


def _export_user_model(checkpoint: Checkpoint, fmt: str, quantize: str | None) -> ExportResult:
    from ..deploy.user_export import export_user_model

    spec = checkpoint.spec
    if quantize:
        raise IsscompressError(f"{checkpoint.name}: int8 export is for isscompress's language-model stacks; a model "
                               "of your own would need its own quantisation checked on its own task.",
                               "Export it in float32, then quantise it with your runtime's tools.")
    if not getattr(spec, "runnable", False):
        raise IsscompressError(f"{checkpoint.name}: a model described only by a groups file cannot be run, so it "
                               "cannot be exported.", "Give its code with --arch FILE.py:FACTORY.")
    payload, diff, inputs, outputs = export_user_model(checkpoint.model(), spec.inputs, spec.more_inputs, fmt,
                                                       checkpoint.name)
    return ExportResult(None, fmt, diff, inputs, outputs, data=payload)


def export(
    source: Checkpoint | str | os.PathLike, output: str | os.PathLike | None, fmt: str, *, force: bool = False,
    quantize: str | None = None, data: str | os.PathLike | None = None, max_increase: float = 1.0,
    arch: str | None = None, groups: str | os.PathLike | None = None,
) -> ExportResult:
    """Export ``source`` as TorchScript or ONNX; refuse when outputs differ on a probe batch. The bytes
    are in the result; with ``output`` they are also written (atomically).

    ``quantize="int8"``: dynamic int8 after shrinking (TorchScript: PyTorch's kernels; ONNX: ONNX Runtime's
    quantiser applied to the checked float32 file). Its parity with float32 is a quality
    question, not a tolerance: with ``data`` the perplexity of both is measured and an increase above
    ``max_increase`` percent is refused; without, the KL on a probe batch is reported.

    A user's own model (``arch``, FILE.py:FACTORY) is traced on its factory's example inputs and checked on them and
    on the factory's first batch (:mod:`isscompress.deploy.user_export`); int8 is the language-model stack's."""
    if fmt not in FORMATS:
        raise IsscompressError(f"Unknown export format '{fmt}'.", f"Use one of: {', '.join(FORMATS)}.")
    if quantize not in (None, "int8"):
        raise IsscompressError(f"Unknown quantisation '{quantize}'.", "Use int8.")
    if output is not None:
        output = check_output_path(output, force=force, inputs=source_files(source))
    checkpoint = as_checkpoint(source, arch=arch, groups=groups)
    if is_onnx(checkpoint):
        raise IsscompressError(f"{checkpoint.name} is already an ONNX model; shrink writes the smaller one as ONNX.",
                               "Run it in ONNX Runtime as it is, or quantise it with onnxruntime.quantization.")
    if isinstance(checkpoint.spec, TracedModel):  # a user's own model: its forward as it is
        result = _export_user_model(checkpoint, fmt, quantize)
    else:
        result = _export_stack(checkpoint, fmt, quantize, data, max_increase)
    if output is None:
        return result
    atomic_write(output, lambda temporary: temporary.write_bytes(result.data))
    return replace(result, output=output)


def _export_stack(checkpoint: Checkpoint, fmt: str, quantize: str | None, data: str | os.PathLike | None,
                  max_increase: float) -> ExportResult:
    """A language-model stack in the flat calling convention, float32 or int8, checked on a probe of other sizes."""
    model = checkpoint.model().float()
    _refuse_projections(fmt, checkpoint, model)
    quantized = None
    if quantize and fmt == "torchscript":
        from ..deploy.quantize import quantize_int8

        quantized = quantize_int8(model)
    wrapper = FlatStateModel(quantized if quantized is not None else model).eval()
    names = io_names(model)
    example = example_arguments(model, steps=5, batch=2, seed=0)
    probe = example_arguments(model, steps=7, batch=3, seed=1)  # other sizes: the graph must not fix them
    with torch.inference_mode():
        expected = wrapper(*probe)
        reference = FlatStateModel(model).eval()(*probe) if quantized is not None else expected
    payload, got = _torchscript(wrapper, example, probe) if fmt == "torchscript" else _onnx(model, probe)
    diff = largest_difference(expected, got)
    if not diff <= TOLERANCE:
        raise IsscompressError(f"The exported {fmt} model differs from the PyTorch model by {diff:.3g} on a probe "
                               f"batch (tolerance {TOLERANCE}); nothing was written.",
                               "Please report this with the checkpoint's layout.")
    if quantize and fmt == "onnx":  # ONNX Runtime quantises the checked float32 file; it runs the result
        from ..deploy.quantize import onnx_int8
        from ..deploy.runtimes import OnnxRuntimeModel

        payload = onnx_int8(payload)
        quantized = OnnxRuntimeModel(payload, model)
        with torch.inference_mode():
            got = list(FlatStateModel(quantized)(*probe))
    result = ExportResult(None, fmt, diff, *names, data=payload, quantize=quantize)
    if quantized is not None:
        result = _int8_quality(result, checkpoint, model, quantized, data, max_increase, _probe_kl(reference, got))
    return result
