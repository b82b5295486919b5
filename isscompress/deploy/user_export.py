"""A user's own model (``--arch``), usually a shrunk one, as TorchScript or ONNX that runs without isscompress.

The graph takes the factory's example inputs as they are (``input0``, ``input1``, ... in the forward's order) and
returns the forward's tensors flattened in order (``output0``, ...). It is traced on the example inputs and checked,
as it was written (reloaded, or run by ONNX Runtime), against the PyTorch model on those inputs and on the factory's
first batch: a graph that fixed something of the example's shape (a Python loop over its length, a size read as a
number) shows there, and is refused rather than written.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..errors import IsscompressError
from .readback import TOLERANCE, largest_difference, torchscript_written
from ..onnx_runtime import ort_session, require_onnx


class FlatOutputs(nn.Module):
    """``model`` returning its outputs as one flat tuple of tensors (an exporter's graph has named tensors only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        return tuple(tree_flatten(self.model(*inputs))[0])


def _tensor_inputs(batches: list[tuple], name: str) -> list[tuple[Tensor, ...]]:
    for batch in batches:
        if not all(isinstance(value, Tensor) for value in batch):
            kinds = ", ".join(type(value).__name__ for value in batch)
            raise IsscompressError(f"{name}: the factory's inputs are ({kinds}); an exported graph takes tensors only.",
                                   "Make the factory's example inputs a tuple of tensors (lengths as a tensor).")
    return [tuple(batch) for batch in batches]


def _outputs(model: nn.Module, inputs: tuple[Tensor, ...], name: str) -> list[Tensor]:
    with torch.inference_mode():
        outputs = tree_flatten(model(*inputs))[0]
    if not outputs or not all(isinstance(value, Tensor) for value in outputs):
        raise IsscompressError(f"{name}: the model's forward returns something other than tensors "
                               f"({', '.join(type(value).__name__ for value in outputs) or 'nothing'}), which an "
                               "exported graph cannot.", "Export a wrapper whose forward returns tensors.")
    return outputs


def _torchscript(model: nn.Module, example: tuple[Tensor, ...]) -> tuple[bytes, Any]:
    payload, loaded = torchscript_written(FlatOutputs(model).eval(), example)
    return payload, lambda *inputs: list(loaded(*inputs))


def _onnx(model: nn.Module, example: tuple[Tensor, ...], outputs: int) -> tuple[bytes, Any]:
    require_onnx()
    names = [f"input{i}" for i in range(len(example))]
    dynamic = {name: {axis: f"{name}_{axis}" for axis in range(value.dim() - (1 if value.is_floating_point() else 0))}
               for name, value in zip(names, example)}  # every axis but a float input's features
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(FlatOutputs(model).eval(), example, buffer, dynamo=False, input_names=names,
                          output_names=[f"output{i}" for i in range(outputs)], dynamic_axes=dynamic, opset_version=17)
    session = ort_session(buffer.getvalue())

    def run(*inputs: Tensor) -> list[Tensor]:
        arrays = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        return [torch.from_numpy(a) for a in arrays]
    return buffer.getvalue(), run


def export_user_model(model: nn.Module, example: tuple, more: tuple[tuple, ...], fmt: str, name: str
                      ) -> tuple[bytes, float, list[str], list[str]]:
    """(file bytes, the largest difference from ``model`` on the checks, input names, output names)."""
    model = model.float().eval()
    batches = _tensor_inputs([example, *more], name)
    expected = [_outputs(model, batch, name) for batch in batches]
    try:
        payload, run = (_torchscript(model, batches[0]) if fmt == "torchscript"
                        else _onnx(model, batches[0], len(expected[0])))
        with torch.inference_mode():
            got = [run(*batch) for batch in batches]
    except IsscompressError:
        raise
    except Exception as err:  # the exporter or runtime cannot take the model's code: say which, and what it said
        raise IsscompressError(f"{name}: the {fmt} exporter could not take this model: {type(err).__name__}: "
                               f"{str(err).splitlines()[0][:300] if str(err) else ''}",
                               "Try the other format, or export from your own code.") from err
    diff = max(largest_difference(want, have) for want, have in zip(expected, got))
    if not diff <= TOLERANCE:
        raise IsscompressError(f"{name}: the exported {fmt} model differs from the PyTorch model by {diff:.3g} on "
                               f"{'the example inputs and the first batch' if more else 'the example inputs'} "
                               f"(tolerance {TOLERANCE}); nothing was written. A graph traced on one input shape can "
                               "fix what the code computes from it (a loop over its length, a size as a number).",
                               "Try the other format, or give the factory example inputs of the shape you deploy.")
    return payload, diff, [f"input{i}" for i in range(len(example))], [f"output{i}" for i in range(len(expected[0]))]
