"""The pruning contract: what every kind of model gives the core, and nothing more.

Regularisation, thresholding, shrinking, checking and costing all go through these methods, so a new kind of model
is one new class that implements them and one registry line in :mod:`isscompress.architectures`. Two implement it:
the language-model stack (:class:`isscompress.architectures.stack.ModelSpec`) and a user's own module, traced
(:class:`isscompress.architectures.traced.TracedModel`). What only language models have (a vocabulary, tying,
perplexity) is the optional :class:`LanguageModelFacts`, which a verb asks for with :func:`language_model_facts`.
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
    name: str = ""  # the module's name in a user's model


class Architecture(Protocol):
    """A model's shape: its ISS group sets, how it shrinks, how it runs and what it costs."""

    kind: ClassVar[str]  # the registry name, stored in checkpoint metadata
    cell: str  # the recurrent cell kind(s), as reports name them
    equations: str  # what its cells are taken to compute (a state dict alone cannot say)

    def group_sets(self) -> tuple[GroupSet, ...]:
        """Every ISS group set; each declares its own width rules."""
        ...

    def with_kept(self, kept: Mapping[str, int] | Mapping[str, Tensor]) -> "Architecture":
        """The smaller architecture after a shrink: ``kept[set name]`` is a count, or the kept units' indices (a
        model whose probe inputs carry unit values, such as a state passed in, needs the indices to cut them)."""
        ...

    def check(self, state: Mapping[str, Tensor]) -> None:
        """Raise ShapeError unless ``state`` holds exactly this architecture's tensors."""
        ...

    def build(self, state: Mapping[str, Tensor], dropout: float = 0.0, variational: bool = False) -> nn.Module:
        """A runnable module whose parameters are the tensors of ``state``, in eval mode."""
        ...

    def probe_inputs(self, steps: int = 6, batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
        """A small deterministic input for output-equality checks and timing."""
        ...

    def probe_outputs(self, state: Mapping[str, Tensor]) -> list[Tensor | None]:
        """The outputs of the model built from ``state`` on the probe inputs (None: an output that is no tensor)."""
        ...

    def kept_outputs(self, outputs: list[Tensor | None], kept: Mapping[str, Tensor]) -> list[Tensor | None]:
        """The positions of this model's ``outputs`` that its shrunk version still returns (outputs that carry
        hidden features lose the removed units' columns)."""
        ...

    def layer_info(self) -> tuple[LayerInfo, ...]: ...

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (a shared tensor counted once)."""
        ...

    def macs_per_token(self) -> dict[str, int]:
        """Multiply-adds per token (per time step) per part."""
        ...

    def to_dict(self) -> dict[str, Any]: ...


class LanguageModelFacts(Protocol):
    """The optional capability of a language model: token ids in, logits over a vocabulary out."""

    vocab_size: int  # 0: the model reads features, not tokens
    tied: bool
    classes: int  # 0: it predicts the next token; else it labels each token with one of this many classes

    @property
    def is_language_model(self) -> bool: ...


def language_model_facts(spec: Architecture) -> LanguageModelFacts | None:
    """The language-model facts of ``spec``, or None for a model that has none."""
    return spec if getattr(spec, "is_language_model", False) else None  # type: ignore[return-value]
