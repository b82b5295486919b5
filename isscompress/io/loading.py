"""Load any supported checkpoint into its architecture's canonical layout, in memory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from torch import Tensor, nn

from ..architectures import architecture_class
from ..architectures.onnx_graph import KIND as ONNX_KIND
from ..core.architecture import Architecture
from ..core.groups import GroupSet
from ..errors import CheckpointError
from .families import detect_family, get_family
from .equations import check_equations
from .files import CHECKPOINT_SUFFIXES, RawCheckpoint, read_checkpoint, sha256_file, write_checkpoint
from .metadata import Metadata

CANONICAL_KEY = re.compile(r"'(layers\.(\d+)\.(\w+)_l0(_reverse)?)'")


@dataclass
class Checkpoint:
    """A model in memory: its architecture, its tensors (canonical layout), where it came from.

    ``path`` is the file it was read from or last written to; None for a checkpoint that so far
    lives only in memory (the result of an in-memory verb).
    """

    spec: Architecture
    state: dict[str, Tensor]
    family: str  # where the model comes from (word_language_model, ...), kept across verbs
    layout: str = "isscompress"  # the key layout of the file it was read from (the family adapter that read it)
    metadata: Metadata = field(default_factory=Metadata)
    path: Path | None = None
    ignored: tuple[str, ...] = ()  # what the file held beside the weights (a training checkpoint's optimizer, ...)

    @cached_property
    def group_sets(self) -> tuple[GroupSet, ...]:
        return self.spec.group_sets()

    @cached_property
    def sha256(self) -> str | None:
        return sha256_file(self.path) if self.path is not None else None

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "(in memory)"

    @property
    def file_bytes(self) -> int | None:
        return self.path.stat().st_size if self.path is not None else None

    @property
    def dtype(self) -> str:
        return str(next(iter(self.state.values())).dtype).replace("torch.", "")

    def model(self, dropout: float = 0.0) -> nn.Module:
        """A runnable model sharing this checkpoint's tensors."""
        return self.spec.build(self.state, dropout)


def _canonical(raw: RawCheckpoint, family: str | None):
    kind = raw.record.architecture
    if kind is not None and architecture_class(kind) is not architecture_class(None):
        try:  # no family reads it: its architecture says how to open it
            architecture_class(kind).infer(raw.tensors)
        except CheckpointError as err:
            raise CheckpointError(f"{raw.path}: {err.message}", err.hint) from None
    if raw.record.spec is not None:  # our own files are unambiguous; an override meant for the source does not apply
        family = "isscompress"
    chosen = get_family(family) if family else detect_family(raw.tensors, str(raw.path))
    canonical = None
    try:
        canonical = chosen.convert(raw)
        spec = architecture_class(canonical.architecture).infer(canonical.tensors, cell_hint=canonical.cell_hint,
                                                                tied=canonical.tied)
    except CheckpointError as err:
        sources = canonical.sources if canonical else {}

        def source_name(match: re.Match[str]) -> str:
            key = match[1]
            if key in sources:
                return f"'{sources[key]}'"
            return f"'{chosen.source_key(int(match[2]), match[3], match[4] or '')}'"

        message = CANONICAL_KEY.sub(source_name, err.message)
        raise CheckpointError(f"{raw.path} ({chosen.name} layout): {message}", err.hint) from None
    except (KeyError, IndexError) as err:
        raise CheckpointError(f"{raw.path} does not have the {chosen.name} layout (missing {err}).",
                              f"The {chosen.name} family expects: {chosen.expects}.") from None
    return chosen.name, canonical, spec


def load_checkpoint(path: str | os.PathLike, family: str | None = None) -> Checkpoint:
    """Read, recognise and check a checkpoint (``family`` overrides auto-detection); an .onnx file is opened as its
    graph's recurrent layers."""
    if is_onnx(path):
        from .onnx_models import open_onnx  # it builds on this module's Checkpoint

        return open_onnx(path)
    raw = read_checkpoint(path)
    name, canonical, spec = _canonical(raw, family)
    state = dict(canonical.tensors)
    dtypes = {t.dtype for t in state.values()}
    if len(dtypes) > 1:
        raise CheckpointError(f"{raw.path} mixes dtypes {sorted(map(str, dtypes))}.",
                              "Save every weight in one dtype.")
    metadata = raw.record
    check_equations({**raw.attributes, **metadata.foreign}, spec.cell, raw.path)
    origin = (metadata.family or name) if name == "isscompress" else name
    return Checkpoint(spec, state, origin, name, metadata, raw.path, raw.ignored)


def as_checkpoint(source: "Checkpoint | str | os.PathLike", family: str | None = None, arch: str | None = None,
                  groups: str | os.PathLike | None = None) -> Checkpoint:
    """A verb's input: a checkpoint already in memory, or a file to load — of a supported family, or of a user's
    own model when its code (``arch``, FILE.py:FACTORY) or its groups (``groups``, a YAML file) are named."""
    if isinstance(source, Checkpoint):
        return source
    if arch is not None or groups is not None:
        from .user_models import open_user_model  # it builds on this module's Checkpoint

        return open_user_model(source, arch, groups)
    return load_checkpoint(source, family)


def is_onnx(source: "Checkpoint | str | os.PathLike") -> bool:
    """Whether ``source`` is an ONNX graph: a checkpoint of one, or an .onnx file."""
    if isinstance(source, Checkpoint):
        return source.spec.kind == ONNX_KIND
    return Path(source).suffix.lower() == ".onnx"


def output_suffixes(source: "Checkpoint | str | os.PathLike") -> tuple[str, ...]:
    """What a checkpoint made from ``source`` is written as: an ONNX graph as .onnx, everything else safetensors."""
    return (".onnx",) if is_onnx(source) else CHECKPOINT_SUFFIXES


def source_files(source: "Checkpoint | str | os.PathLike") -> tuple[Path, ...]:
    """The file a verb's input came from (none for a checkpoint that lives only in memory), which its
    output must not overwrite."""
    if isinstance(source, Checkpoint):
        return (source.path,) if source.path is not None else ()
    return (Path(source),)


def save_checkpoint(checkpoint: Checkpoint, output: str | os.PathLike) -> Checkpoint:
    """Write ``checkpoint`` as safetensors (an ONNX graph as .onnx), atomically, and return it pointing at the file."""
    output = Path(output)
    if is_onnx(checkpoint):
        from .onnx_models import write_onnx

        write_onnx(output, checkpoint.spec, checkpoint.state, checkpoint.metadata)
    else:
        write_checkpoint(output, checkpoint.state, checkpoint.metadata)
    return replace(checkpoint, path=output)


def load(path: str | os.PathLike, family: str | None = None, dropout: float = 0.0) -> nn.Module:
    """A runnable ``nn.Module`` for any supported checkpoint, including shrunk ones."""
    return load_checkpoint(path, family).model(dropout)
