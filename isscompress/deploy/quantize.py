"""int8 after shrinking: PyTorch's dynamic quantisation of the recurrent and linear layers, and a weight-only
int8 embedding table (per-row scales) so that the vocabulary does not stay in float32.

Dynamic quantisation stores weights as int8 and quantises activations on the fly per batch; it needs no
calibration data, which suits a user who has the model and maybe no data. ``torch.ao.quantization`` is
deprecated in favour of torchao, which has no recurrent kernels yet; this module is the one place to change.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn

from .flat import StateModel
from ..layers.cells import CELLS
from ..errors import IsscompressError

def quantize_int8(model: StateModel) -> nn.Module:
    """A quantised copy of ``model`` (eval mode, CPU): int8 LSTM/GRU and Linear layers, int8 embedding rows."""
    spec = model.spec
    if not spec.cell_kind.int8:
        covered = ", ".join(name for name, cell in CELLS.items() if cell.int8)
        raise IsscompressError(f"int8 quantisation covers {covered} layers; this model's cells are {spec.cell}.",
                               "Export it in float32 (without --quantize).")
    if any(layer.proj_size for layer in spec.layers):
        raise IsscompressError("int8 quantisation does not cover LSTMs with projections (proj_size).",
                               "Export it in float32 (without --quantize).")
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

    plan = {nn.LSTM: default_dynamic_qconfig, nn.GRU: default_dynamic_qconfig, nn.Linear: default_dynamic_qconfig,
            nn.Embedding: float_qparams_weight_only_qconfig}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice, once per layer
        return quantize_dynamic(copy.deepcopy(model).cpu().float().eval(), plan, dtype=torch.qint8)


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict as torch.save writes it (packed int8 weights included)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def onnx_int8(model_bytes: bytes) -> bytes:
    """ONNX Runtime's dynamic int8 quantisation of a float32 ONNX model (its LSTM, MatMul/Gemm and Gather)."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(model_bytes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ort_quantize_dynamic(source, target, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["LSTM", "GRU", "MatMul", "Gemm", "Gather"])
        return target.read_bytes()
