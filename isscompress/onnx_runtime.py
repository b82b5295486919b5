"""ONNX and ONNX Runtime, asked for once: whether they are installed (an optional extra), and a CPU session on
this process's torch threads. The exporters, the runtimes, the ONNX-graph reader and its architecture all use it."""

from __future__ import annotations

import importlib.util
from typing import Any

from .errors import IsscompressError


def missing_onnx() -> str | None:
    """The first of onnx (torch.onnx.export needs it, and fails deep inside torch without it) and onnxruntime
    that is not installed."""
    return next((name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None), None)


def require_onnx(what: str = "ONNX", error: type[IsscompressError] = IsscompressError) -> None:
    """Raise ``error``, naming the missing package, unless both are installed; ``what`` says what needed them."""
    missing = missing_onnx()
    if missing:
        raise error(f"{what} needs onnx and onnxruntime; {missing} is not installed.",
                    "pip install 'isscompress[onnx]'.")


def ort_session(model_bytes: bytes) -> Any:
    """An ONNX Runtime session on the CPU, with torch's thread count. Its log is silenced: a failure raises (and
    our error says it), and a declared output shape the graph disagrees with is not the user's to read about."""
    require_onnx()
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
