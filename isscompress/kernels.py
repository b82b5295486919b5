"""Which CPU kernel runs recurrent layers: a choice every measurement names."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def rnn_kernel(kind: str) -> Iterator[str]:
    """Run recurrent layers on CPU through ``"onednn"`` or PyTorch's ``"native"`` kernel.

    On CPU, oneDNN re-lays-out the weights on every call: fine for long sequences, but
    token-by-token decoding of a 1500-wide layer ran 6x slower than the native kernel.
    """
    if kind not in ("onednn", "native"):
        raise ValueError(f"kernel must be 'onednn' or 'native', not {kind!r}")
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = kind == "onednn"
    try:
        yield kind
    finally:
        torch.backends.mkldnn.enabled = previous
