"""The architecture contract: what every model family gives the core, and nothing more.

Regularisation, thresholding, shrinking, checking and costing all go through these methods, so
a new kind of model (a recurrent highway network, a traced user model) is one new class that
implements them and one registry line in :mod:`isscompress.architectures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Protocol

import torch
from torch import Tensor, nn

from .groups import GroupSet


@dataclass(frozen=True)
class LayerInfo:
    """One recurrent layer as reports show it."""

    index: int
    cell: str
    input_size: int
    width: int
    directions: int
    proj_size: int
    depth: int = 1


class Architecture(Protocol):
    """A model's shape: its ISS group sets, how it shrinks, how it runs and what it costs.

    ``build`` returns a module whose ``forward(inputs, hidden=None)`` returns ``(outputs, hidden)``.
    """

    kind: ClassVar[str]  # the registry name, stored in checkpoint metadata
    cell: str
    vocab_size: int  # 0: the model reads features, not tokens
    tied: bool

    @property
    def is_language_model(self) -> bool: ...

    def group_sets(self) -> tuple[GroupSet, ...]:
        """Every ISS group set; each declares its own width rules."""
        ...

    def with_kept(self, kept: Mapping[str, int]) -> "Architecture":
        """The smaller architecture after keeping ``kept[set name]`` units of each set."""
        ...

    def check(self, state: Mapping[str, Tensor]) -> None:
        """Raise ShapeError unless ``state`` holds exactly this architecture's tensors."""
        ...

    def build(self, state: Mapping[str, Tensor], dropout: float = 0.0, variational: bool = False) -> nn.Module:
        """A runnable module whose parameters are the tensors of ``state`` (no copy), in eval mode; ``dropout``
        applies in training (``variational``: one mask per window, the same at every time step)."""
        ...

    def probe_inputs(self, steps: int = 6, batch: int = 3, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """A small deterministic input batch for output-equality checks and timing."""
        ...

    def kept_outputs(self, kept: Mapping[str, Tensor]) -> Tensor | None:
        """Output features of this model that the shrunk model still returns (None: all of them)."""
        ...

    def layer_info(self) -> tuple[LayerInfo, ...]: ...

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (a tied matrix counted once)."""
        ...

    def macs_per_token(self) -> dict[str, int]:
        """Multiply-adds per token per part."""
        ...

    def to_dict(self) -> dict[str, Any]: ...
