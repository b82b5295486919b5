"""ONNX files in and out: a model whose recurrent layers are ONNX ``LSTM``/``GRU``/``RNN`` operators opened as a
checkpoint of :class:`OnnxGraph`, and a (shrunk) one written back as an .onnx file with isscompress's record in
its ``metadata_props``.

Only the file named is read: weights stored outside it (external data) are refused, as are quantised operators
(``DynamicQuantizeLSTM`` and other non-standard domains) — shrink the float model, then quantise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..architectures.onnx_graph import OnnxGraph, probe_inputs
from ..architectures.onnx_layers import RECURRENT_OPS, find_layers, refuse
from ..errors import CheckpointError
from ..onnx_runtime import ort_session, require_onnx
from ..outputs import atomic_write
from .files import RawCheckpoint
from .loading import Checkpoint
from .metadata import METADATA_KEY, Metadata

RECORD_KEY = METADATA_KEY  # the metadata_props entry holding isscompress's record
MAX_ONNX_BYTES = 2**31  # protobuf's own limit for one message: a larger .onnx keeps its weights outside


def read_onnx(path: Path) -> Any:
    """The file's ``ModelProto``, checked: bounded, self-contained, standard operators."""
    require_onnx(f"{path} is an ONNX model; reading one", CheckpointError)
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file.", "Check the path.")
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise CheckpointError(f"{path} is larger than an ONNX file can be ({MAX_ONNX_BYTES >> 30} GiB).",
                              "Give the .onnx file itself.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(err).__name__}).",
                              "It may be truncated or not ONNX; export it again.") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise CheckpointError(f"{path} keeps weights in external data files beside it; isscompress reads only the "
                              "file it is given.", "Save the model as one file (onnx.save(model, path, "
                              "save_as_external_data=False)).")
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        quantised = any("Quantize" in name for name in foreign)
        raise CheckpointError(f"{path} uses operators outside the ONNX standard ({', '.join(foreign[:4])})"
                              + ("; a quantised recurrent layer cannot be shrunk exactly." if quantised else "."),
                              "Shrink the float32 model, then quantise it (onnxruntime.quantization)." if quantised
                              else "Export the model with standard ONNX operators.")
    return model


def _probe_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """The shape of every node output on one probe run (the sizes layout operations give the layers' outputs)."""
    probe = _with_outputs(model, [o for n in model.graph.node for o in n.output if o])
    session = ort_session(probe.SerializeToString())
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), probe_inputs(model))}
    return {o.name: tuple(np.shape(a)) for o, a in zip(session.get_outputs(), session.run(None, feeds))}


def _with_outputs(model: Any, names: list[str]) -> Any:
    """A copy of ``model`` that also returns the tensors ``names`` (ONNX Runtime infers their types)."""
    import onnx

    probe = type(model)()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in dict.fromkeys(names) if name not in known)
    return probe


def open_onnx(path: str | Path) -> Checkpoint:
    """An ONNX file as a checkpoint of its recurrent layers."""
    from onnx import numpy_helper

    path = Path(path)
    model = read_onnx(path)
    if not any(n.op_type in RECURRENT_OPS for n in model.graph.node):
        raise CheckpointError(f"{path} has no ONNX LSTM, GRU or RNN operator.",
                              "isscompress removes hidden units of recurrent layers; this graph has none.")
    try:
        shapes = _probe_shapes(model)
    except Exception as err:  # onnxruntime's own failure on a probe input
        raise refuse(path, f"ONNX Runtime could not run it on a probe input ({type(err).__name__}: "
                     f"{' '.join(str(err).split())[:200]})", "Check that the file runs in ONNX Runtime.") from None
    try:
        spec = OnnxGraph(model, find_layers(model, path, shapes))
        arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        state = spec.canonical(arrays)
    except (ValueError, KeyError, TypeError, IndexError) as err:  # a graph ONNX Runtime ran but we cannot read
        raise refuse(path, f"its recurrent layers could not be read ({type(err).__name__}: "
                     f"{' '.join(str(err).split())[:160]})", "Export it again with standard ONNX operators; if it "
                     "runs as it is, report it with the graph's recurrent part.") from None
    record = next((p.value for p in model.metadata_props if p.key == RECORD_KEY), None)
    metadata = Metadata.from_header({RECORD_KEY: record}, str(path)) if record else Metadata()
    return Checkpoint(spec, state, "onnx", "onnx", metadata, path)


def write_onnx(output: Path, spec: OnnxGraph, state: dict, metadata: Metadata) -> None:
    """The graph at ``spec``'s widths holding ``state``, with ``metadata`` in its metadata_props, atomically."""
    write_graph(output, spec.materialize(state), metadata)


def write_module(output: Path, module: Any, state: dict, metadata: Metadata) -> None:
    """A fine-tuned :class:`~isscompress.architectures.onnx_torch.OnnxModule`'s weights (``state``, its state-dict
    names) written back into its graph."""
    write_graph(output, module.to_onnx(state), metadata)


def onnx_module(path: str | Path) -> Any:
    """The graph of an ``.onnx`` file (read and checked as ``shrink`` reads it) as a trainable PyTorch module
    (:class:`~isscompress.architectures.onnx_torch.OnnxModule`), checked against ONNX Runtime on a probe input."""
    from ..architectures.onnx_torch import OnnxModule, check_against_runtime

    module = OnnxModule(read_onnx(Path(path)), path)
    check_against_runtime(module)
    return module


def module_state(path: str | Path) -> RawCheckpoint:
    """An ``.onnx`` file's weights under the names of its PyTorch module (``OnnxModule``), with its record."""
    from ..architectures.onnx_torch import OnnxModule

    path = Path(path)
    model = read_onnx(path)
    state = {k: v.detach() for k, v in OnnxModule(model, path).state_dict().items()}
    record = next((p.value for p in model.metadata_props if p.key == RECORD_KEY), None)
    return RawCheckpoint(path, state, {RECORD_KEY: record} if record else {})


def write_graph(output: Path, model: Any, metadata: Metadata) -> None:
    """``model`` (a ``ModelProto``) with ``metadata`` in its metadata_props, atomically."""
    header = metadata.to_header()
    kept = [p for p in model.metadata_props if p.key != RECORD_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = RECORD_KEY, header.get(RECORD_KEY, json.dumps({}))
    atomic_write(output, lambda temporary: temporary.write_bytes(model.SerializeToString()))
