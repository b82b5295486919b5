"""How the cell table's own modules start their weights, as PyTorch's recurrent layers do."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform(shape: tuple[int, ...], bound: float) -> Tensor:
    """U(-bound, bound); left empty on the meta device, where a model is only laid out before its trained weights
    are assigned."""
    weight = torch.empty(shape)
    return weight if weight.device.type == "meta" else weight.uniform_(-bound, bound)
