"""The registry of architectures. Adding one: a module implementing
:class:`isscompress.core.architecture.Architecture`, and one line here."""

from __future__ import annotations

from typing import Any, Mapping

from ..core.architecture import Architecture
from ..errors import CheckpointError
from .onnx_graph import OnnxGraph
from .stack import LayerSpec, ModelSpec
from .traced import TracedModel

ARCHITECTURES: dict[str, Any] = {ModelSpec.kind: ModelSpec, TracedModel.kind: TracedModel, OnnxGraph.kind: OnnxGraph}


def architecture_class(kind: str | None) -> Any:
    """The class of an architecture kind (a file without a kind predates the registry: a stack)."""
    kind = kind or ModelSpec.kind
    if kind not in ARCHITECTURES:
        raise CheckpointError(f"Unknown architecture '{kind}'.",
                              f"This isscompress knows: {', '.join(ARCHITECTURES)}; upgrade it to read this file.")
    return ARCHITECTURES[kind]


def architecture_from_dict(data: Mapping[str, Any], kind: str | None = None) -> Architecture:
    return architecture_class(kind).from_dict(data)


__all__ = ["ARCHITECTURES", "Architecture", "LayerSpec", "ModelSpec", "OnnxGraph", "TracedModel", "architecture_class",
           "architecture_from_dict"]
