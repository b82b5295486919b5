"""What an export writes, read back as written and compared: the one TorchScript round trip and the one parity
measure of every export (a language-model stack's, a user's model's)."""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

TOLERANCE = 1e-4  # largest difference an exported float32 model may show against the PyTorch model


def torchscript_written(module: nn.Module, example: tuple[Tensor, ...]) -> tuple[bytes, torch.jit.ScriptModule]:
    """``module`` traced on ``example``: the bytes of the file, and the model loaded back from them (what is checked is
    what was written, not what is in memory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)  # the caller's check runs on other shapes
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue(), torch.jit.load(io.BytesIO(buffer.getvalue()))


def largest_difference(expected: Sequence[Tensor], got: Sequence) -> float:
    """The largest absolute difference between two lists of outputs; infinite when their number or shapes differ."""
    if len(expected) != len(got) or any(tuple(e.shape) != tuple(g.shape) for e, g in zip(expected, got)):
        return float("inf")
    return max([0.0, *(float((torch.as_tensor(g).float() - e.float()).abs().max()) for e, g in zip(expected, got)
                       if e.numel())])
