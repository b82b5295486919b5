"""inspect / shrink / finetune / report for a checkpoint of a user's own model: its code named by
``--arch FILE.py:FACTORY`` (``FACTORY()`` returns the model, example inputs and, to fine-tune, unlabelled
batches), or its groups declared by ``--groups FILE.yaml``.

The checkpoint holds the model's state dict. A shrunk checkpoint still loads through the same factory:
the model is resized to the file's tensors (:func:`isscompress.resize_to`) before anything else.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..anymodel import Plan, TraceError, discover, load_groups, resize_to
from ..anymodel.resize import inputs_for
from ..measure.speed import interleaved
from ..training.tasks import divergence, floats
from ..anymodel.resize import shrink_module_to
from ..core.groups import all_unit_norms
from ..core.surgery import shrink_state_dict
from ..core.thresholding import kept_counts, select_kept
from ..errors import CheckpointError, IsscompressError
from ..io.files import check_checkpoint_output, read_checkpoint, sha256_file, write_checkpoint
from ..io.metadata import Metadata



USER_MODEL = "user-model"  # the architecture kind a traced user model is recorded as


class ArchError(IsscompressError):
    """``--arch FILE.py:FACTORY`` cannot give a model."""


def load_factory(arch: str) -> tuple[nn.Module, tuple, Any]:
    """Run the user's ``FACTORY()`` from ``FILE.py`` (their code, which they named on the command line).

    It returns ``(model, example_inputs)`` or ``(model, example_inputs, batches)``: unlabelled input tuples
    (or a function giving them) for label-free fine-tuning."""
    file, _, name = arch.rpartition(":")
    if not file or not name:
        raise ArchError(f"--arch {arch!r} is not FILE.py:FACTORY.", "Example: --arch mymodel.py:make_model.")
    path = Path(file)
    if not path.is_file():
        raise ArchError(f"--arch: {path} does not exist or is not a file.", "Check the path.")
    spec = importlib.util.spec_from_file_location(f"isscompress_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # so the file can import its neighbours
    try:
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise ArchError(f"--arch: importing {path} failed: {type(err).__name__}: {err}.",
                            "Run the file with python to see the whole error.") from err
        factory = getattr(module, name, None)
        if not callable(factory):
            raise ArchError(f"--arch: {path} has no function {name!r}.",
                            f"Define {name}() returning (model, example_inputs).")
        try:
            made = factory()
        except Exception as err:
            raise ArchError(f"--arch: {name}() in {path} failed: {type(err).__name__}: {err}.",
                            "Call it from python to see the whole error.") from err
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    if not (isinstance(made, tuple) and len(made) in (2, 3) and isinstance(made[0], nn.Module)):
        raise ArchError(f"--arch: {name}() in {path} returned {type(made).__name__}, not (model, example_inputs).",
                        "Return the model and a tuple of example inputs for its forward (and, to fine-tune, "
                        "unlabelled input batches).")
    model, inputs, batches = made if len(made) == 3 else (*made, None)
    return model, inputs if isinstance(inputs, tuple) else (inputs,), batches


def _fit(model: nn.Module, tensors: dict[str, Tensor], checkpoint: Path, stored_widths: bool = False) -> nn.Module:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "") if missing else "",
            f"not in the model {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else "")
            if unexpected else "") if part)
        raise CheckpointError(f"{checkpoint} does not match the model from --arch: {detail}.",
                              "Save the model's state_dict() with the same module names.")
    return resize_to(model, {k: v.to(own[k].dtype) for k, v in tensors.items()}, stored_widths)


def _inputs_for_shrunk(model: nn.Module, inputs: tuple, metadata: Metadata) -> tuple:
    """The factory's example inputs fit the original model; for a checkpoint that a shrink made (it records the
    kept units), a state the inputs pass in is cut to the kept units, as the shrink's own check fed it."""
    widths = {m.hidden_size for m in model.modules() if isinstance(m, (nn.RNNBase, nn.RNNCellBase))}
    states = [leaf for leaf in tree_flatten(inputs)[0]
              if isinstance(leaf, Tensor) and leaf.is_floating_point() and leaf.dim() and leaf.shape[-1] in widths]
    if not metadata.kept or not states:  # no input can be a layer's state: nothing to cut, no trace needed
        return inputs
    plan = discover(model, inputs)  # the factory's model: the original's sizes, which the inputs fit
    if not plan.input_labels or not set(metadata.kept) <= {gs.name for gs in plan.group_sets}:
        return inputs
    return inputs_for(plan, inputs, {name: torch.tensor(kept) for name, kept in metadata.kept.items()})[1]


@dataclass
class UserModel:
    """A checkpoint of a user's model, opened: the model with its weights (None with only --groups)."""

    path: Path
    tensors: dict[str, Tensor]
    metadata: Metadata
    plan: Plan
    model: nn.Module | None
    inputs: tuple | None
    batches: Any = None

    def widths(self) -> dict[str, int]:
        return {gs.name: gs.size for gs in self.plan.group_sets}

    def derived(self, stage: str) -> Metadata:
        """The record of a checkpoint made from this one: the source's record carried over, one lineage step
        (file, sha256), as the recipe path writes it."""
        return replace(self.metadata.derived(stage, self.path.name, sha256_file(self.path),
                                             self.metadata.family or USER_MODEL), architecture=USER_MODEL)

    def second_batch(self) -> tuple[tuple, ...]:
        """The factory's first unlabelled batch, when it gives any: the shrink is checked on it too."""
        if self.batches is None:
            return ()
        first = next(iter(self.batches() if callable(self.batches) else self.batches), None)
        return (first if isinstance(first, tuple) else (first,),) if first is not None else ()


def open_user_model(checkpoint: str | Path, arch: str | None = None, groups: str | Path | None = None) -> UserModel:
    """Read the state dict, build the model from ``arch`` and find its groups (or read them from ``groups``)."""
    if arch is None and groups is None:
        raise ArchError("A user model needs --arch FILE.py:FACTORY (its code) or --groups FILE.yaml (its ISS groups).",
                        "See docs/any-model.md.")
    raw = read_checkpoint(checkpoint)
    tensors = dict(raw.tensors)
    metadata = Metadata.from_header(raw.metadata, str(raw.path))
    model = inputs = batches = None
    if arch is not None:
        factory_model, inputs, batches = load_factory(arch)
        inputs = _inputs_for_shrunk(factory_model, inputs, metadata)
        model = _fit(factory_model, tensors, raw.path)
    if groups is not None:
        plan = load_groups(groups, tensors)
    else:
        try:
            plan = discover(model, inputs)
        except TraceError:  # a shrunk model whose forward reads self.hidden_size-like attributes: as shrink ran it
            model = _fit(factory_model, tensors, raw.path, stored_widths=True)
            plan = discover(model, inputs)
    return UserModel(raw.path, tensors, metadata, plan, model, inputs, batches)


@dataclass
class UserShrink:
    source: Path
    output: Path | None
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    parameters: tuple[int, int]
    verified: bool

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "output": str(self.output), "widths_before": self.widths_before,
                "widths_after": self.widths_after, "parameters": list(self.parameters), "verified": self.verified}


def shrink_user_model(checkpoint: str | Path, output: str | Path | None, threshold: float, arch: str | None = None,
                      groups: str | Path | None = None, force: bool = False) -> UserShrink:
    """Remove the units whose group norm is at most ``threshold``; with ``arch``, checked in float64 first.

    With only ``groups`` the surgery is the declared groups' and cannot be run to check it (``verified`` False)."""
    opened = open_user_model(checkpoint, arch, groups)
    if output is not None:
        output = check_checkpoint_output(output, force=force, inputs=(opened.path,))
    sets = opened.plan.group_sets
    kept = select_kept(all_unit_norms(opened.tensors, sets), sets, threshold)
    if opened.model is not None:
        small = shrink_module_to(opened.model, opened.inputs, opened.plan, kept, more_inputs=opened.second_batch())
        tensors = {k: v.detach() for k, v in small.state_dict().items()}
    else:
        tensors = shrink_state_dict(opened.tensors, sets, kept)
    after = kept_counts(kept)
    if output is not None:
        metadata = replace(opened.derived("shrink"), threshold=threshold, widths_before=opened.widths(),
                           widths_after=after, kept={name: indices.tolist() for name, indices in kept.items()})
        write_checkpoint(output, tensors, metadata)
    count = lambda state: sum(v.numel() for v in state.values())  # noqa: E731
    return UserShrink(opened.path, Path(output) if output else None, opened.widths(), after,
                      (count(opened.tensors), count(tensors)), opened.model is not None)



@dataclass
class UserReport:
    original: Path
    shrunk: Path
    widths: dict[str, tuple[int, int]]
    parameters: tuple[int, int]
    file_bytes: tuple[int, int]
    seconds: tuple[float, float]  # median forward time on the example inputs
    output_gap: float  # KL (or MSE) of the shrunk model's outputs from the original's, on the example inputs
    threads: int
    agreement: float | None = None  # share of output positions whose top-1 class is the original's

    @property
    def warnings(self) -> list[str]:
        """A gap that changes predictions is said as a warning, not left as a bare number."""
        found = []
        if self.agreement is not None and self.agreement < AGREEMENT_WARNING:
            found.append(f"the shrunk model's top-1 output differs from the original's at {1 - self.agreement:.1%} "
                         "of the example positions: it is measurably a different model. Fine-tune longer or with a "
                         "smaller lambda (or a target), and measure it on your task's metric.")
        elif self.output_gap > GAP_WARNING:
            found.append(f"the output gap {self.output_gap:.3g} is large (0 is identical; above {GAP_WARNING} outputs "
                         "move noticeably). Measure the shrunk model on your task's metric before shipping it.")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {"original": str(self.original), "shrunk": str(self.shrunk),
                "widths": {k: list(v) for k, v in self.widths.items()}, "parameters": list(self.parameters),
                "file_bytes": list(self.file_bytes), "forward_seconds": list(self.seconds),
                "speedup": self.seconds[0] / max(self.seconds[1], 1e-12), "output_gap": self.output_gap,
                "top1_agreement": self.agreement, "threads": self.threads, "warnings": self.warnings}


AGREEMENT_WARNING = 0.99  # below this share of unchanged top-1 outputs, a report warns
GAP_WARNING = 0.05  # KL in nats per position (or MSE) above which a report warns


def compare_outputs(student: list[Tensor], teacher: list[Tensor], loss: str = "kl") -> tuple[float, float | None]:
    """(the distillation gap summed over outputs of equal shape, the share of positions whose top-1 output is the
    teacher's — None when no output is a score vector). Outputs that carry hidden features are narrower in a shrunk
    model and are left out: the model's answers are what is compared."""
    same = total = 0
    for a, b in zip(student, teacher):
        if a.shape == b.shape and a.dim() and a.shape[-1] > 1:
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a[..., 0].numel()
    return float(divergence(student, teacher, 1.0, loss)), (same / total if total else None)


def report_user_models(original: str | Path, shrunk: str | Path, arch: str, repeats: int = 7,
                       loss: str = "kl") -> UserReport:
    """Widths per set, parameters, file sizes, forward time on the example inputs (interleaved), and how far
    the shrunk model's outputs are from the original's."""
    first = open_user_model(original, arch)
    second = open_user_model(shrunk, arch)  # its inputs cut to its kept units where the inputs pass states in
    big, small = first.model.eval(), second.model.eval()
    with torch.no_grad():
        times = interleaved(lambda: big(*first.inputs), lambda: small(*second.inputs), repeats)
        gap, agreement = compare_outputs(floats(small(*second.inputs)), floats(big(*first.inputs)), loss)
    widths_after = {name: size for name, size in second.widths().items()}
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return UserReport(first.path, second.path,
                      {name: (size, widths_after.get(name, 0)) for name, size in first.widths().items()},
                      (count(big), count(small)), (first.path.stat().st_size, second.path.stat().st_size),
                      (statistics.median(times[0]), statistics.median(times[1])), gap, torch.get_num_threads(),
                      agreement)
