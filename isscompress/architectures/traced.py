"""A user's own PyTorch module, traced, as an architecture: the pruning contract for any model.

Its group sets are the plan the tracer found (or a groups file declared), ``with_kept`` resizes the module's
layers, ``build`` is the user's module with the tensors loaded, the probe is the factory's example inputs (and its
first batch), and the kept outputs are the output positions whose labels name kept units. So shrink, its check,
report and inspect are the language-model stack's own verbs.

Shared tensors (a decoder tied to its embedding) are found once, from the module itself: the canonical state holds
each tensor under its first name only (as safetensors' ``save_model`` writes it), and ``build`` ties the others again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from ..anymodel.labels import ZERO, is_cell, recurrent_shape
from ..anymodel.flow import TraceError
from ..anymodel.plan import Plan, discover
from ..anymodel.probe import float64_outputs
from ..anymodel.resize import inputs_for, kept_mask, resize_to
from ..anymodel.sharing import shared_names, with_shared
from ..core.architecture import LayerInfo
from ..layers.cells import CellKind, cell_of_module
from ..core.groups import GroupSet
from ..core.surgery import shrink_state_dict, shrunk_group_sets
from ..errors import CheckpointError, ShapeError, ShrinkError
from .stack import LayerSpec

KIND = "user-model"


def recurrent_modules(module: nn.Module) -> list[tuple[str, nn.Module, CellKind]]:
    """The recurrent layers and cells of ``module``, with their cell table entries, in module order."""
    found = [(name, m, cell_of_module(m)) for name, m in module.named_modules()]
    return [(name, m, kind) for name, m, kind in found if kind is not None]


def _padding_as_units(labels: Tensor) -> Tensor:
    """A padded output's padding (exact zeros, labelled ZERO) belongs to the unit of its feature column (the last
    axis), so a removed unit's column goes padding and all, as it does in the shrunk model's output."""
    if labels.dim() == 0:
        return labels
    columns = labels.reshape(-1, labels.shape[-1])
    known = columns >= 0
    low = torch.where(known, columns, torch.iinfo(torch.long).max).amin(0)
    high = torch.where(known, columns, -1).amax(0)
    unit = torch.where(known.any(0) & (low == high), low, ZERO)  # one unit per column, else left as it is
    return torch.where(labels == ZERO, unit.expand_as(labels), labels)


@dataclass(frozen=True, eq=False)
class TracedModel:
    """A user's module at one size: the plan of its groups, and the inputs its check and timing run on.

    ``module`` is None when only a groups file describes the model: it can be shrunk by its declaration but not run,
    so its shrink cannot be checked."""

    kind: ClassVar[str] = KIND
    module: nn.Module | None
    plan: Plan
    inputs: tuple | None = None
    more_inputs: tuple[tuple, ...] = ()  # other batches the check runs on (the factory's first batch)
    made_by_shrink: bool = False  # the user's own module is checked for a random forward; one we made is not
    stored_widths: bool = False  # whether attributes like self.hidden_size were resized with the layers
    aliases: dict[str, str] = field(default_factory=dict)
    batches: Any = None  # the factory's unlabelled batches (or a function giving them), for label-free training
    evaluate: Any = None  # the factory's task metric: evaluate(model) -> {metric name: value}
    arch: str | None = None  # the factory it came from (FILE.py:FACTORY), to open its relatives (a teacher)
    task_loss: Any = None  # the factory file's task_loss(outputs, batch): its labels' loss, for distill.alpha < 1
    sizes: dict[str, int] = field(default_factory=dict)  # a view for costs: units kept per set (with_kept by counts)
    split: tuple[str, ...] = ()  # multi-layer recurrent modules made LayerwiseRNN (iss.split_layers), as recorded

    @classmethod
    def of(cls, module: nn.Module | None, plan: Plan, inputs: tuple | None = None, more_inputs: tuple[tuple, ...] = (),
           batches: Any = None, evaluate: Any = None, arch: str | None = None, task_loss: Any = None,
           split: tuple[str, ...] = ()) -> "TracedModel":
        return cls(module, plan, inputs, more_inputs, aliases=shared_names(module) if module is not None else {},
                   batches=batches, evaluate=evaluate, arch=arch, task_loss=task_loss, split=tuple(split))

    @classmethod
    def infer(cls, state: Mapping[str, Tensor], **_: Any) -> "TracedModel":
        return cls.from_dict({})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TracedModel":
        raise CheckpointError("This checkpoint is of a user's own model (isscompress wrote it from a model opened with "
                              "--arch): its architecture is the code that built it.",
                              "Open it with --arch FILE.py:FACTORY (the factory of the original model) in any verb "
                              "(inspect, shrink, finetune, run, report, eval, export), or in Python with "
                              "isscompress.resize_to(model, tensors).")

    @property
    def runnable(self) -> bool:
        return self.module is not None and self.inputs is not None

    @property
    def cell(self) -> str:
        kinds = dict.fromkeys(kind.name for _, _, kind in self._recurrent())
        return "+".join(kinds) or "declared groups"

    @property
    def equations(self) -> str:
        return "; ".join(dict.fromkeys(kind.equations for _, _, kind in self._recurrent()))

    def _recurrent(self) -> list[tuple[str, nn.Module, CellKind]]:
        return recurrent_modules(self.module) if self.module is not None else []

    def canonical(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``state`` without the other names of shared tensors."""
        return {k: v for k, v in state.items() if k not in self.aliases}

    # The pruning contract
    def group_sets(self) -> tuple[GroupSet, ...]:
        return self.plan.group_sets

    def with_kept(self, kept: Mapping[str, int] | Mapping[str, Tensor], replan: bool = True) -> "TracedModel":
        """With the kept units' indices: the module with its layers resized, as written; when that cannot run its
        inputs, with attributes such as ``self.hidden_size`` around the layers resized too (the check then proves
        which reading is exact). With counts: a view that only costs the smaller model (a budget asks this at every
        step; the shapes follow from the group sets without building anything). ``replan``: also find the smaller
        module's own plan (for a checkpoint that may be fine-tuned or shrunk again); a trial shrink that only runs
        the module does without."""
        if all(isinstance(value, int) for value in kept.values()):
            return replace(self, sizes=dict(kept))
        indices = dict(kept)
        if self.module is None:
            return self
        template = with_shared(shrink_state_dict(self.canonical(self.module.state_dict()), self.plan.group_sets,
                                                 indices), self.aliases)
        inputs = inputs_for(self.plan, self.inputs, indices)[1] if self.inputs is not None else None
        small = replace(self, module=resize_to(self.module, template), inputs=inputs, made_by_shrink=True)
        stored = replace(small, module=resize_to(self.module, template, stored_widths=True), stored_widths=True)
        if not small.runnable:
            return small
        # Attributes such as self.nhid are resized with their layers whenever the model computes the same with them,
        # so its own methods (init_hidden) make states of the new width; kept as they were only where resizing them
        # breaks the forward or changes what it computes (an unrelated attribute of the same value).
        plain_outputs, stored_outputs = small._outputs(), stored._outputs()
        if stored_outputs is not None and (plain_outputs is None or _same(plain_outputs, stored_outputs)):
            small = stored
        return replace(small, plan=small._replanned(self.plan, indices)) if replan else small

    def _replanned(self, plan: Plan, kept: Mapping[str, Tensor]) -> Plan:
        """The shrunk module's own plan, so it can be fine-tuned or shrunk again in memory: found again by the tracer
        (as reopening the file would), else the original plan's sets resized to the kept units."""
        features = any(gs.kind == "feature" for gs in plan.group_sets)
        try:
            return discover(self.module, self.inputs, features=features)
        except (TraceError, ShrinkError):
            return Plan(shrunk_group_sets(plan.group_sets, kept), aliases=plan.aliases)

    def layerwise(self) -> "TracedModel":
        """This model with each multi-layer nn.LSTM/GRU/RNN split into layers of their own (``iss.split_layers``):
        checked to compute the same, and tried with its first split layer one unit narrower than the next (the
        model's own code must run layers of different widths, e.g. not stack their final states), else ShrinkError."""
        from ..anymodel.resize import shrink_module_to
        from ..anymodel.split import multi_layer_modules, split_layers

        names = multi_layer_modules(self.module) if self.module is not None else []
        if not names:
            if self.split:  # split when it was fine-tuned before
                return self
            raise ShrinkError("The model has no nn.LSTM, nn.GRU or nn.RNN of more than one layer to split.",
                              "Leave iss.split_layers out: each recurrent module already has its own width.")
        if not self.runnable:
            raise ShrinkError("A model that cannot be run (no example inputs) cannot be checked after a split.",
                              "Give the factory's example inputs.")
        module = split_layers(self.module, names)
        features = any(gs.kind == "feature" for gs in self.plan.group_sets)
        split = replace(self, module=module, plan=discover(module, self.inputs, features=features),
                        aliases=shared_names(module), split=(*self.split, *names))
        before, after = self._outputs(), split._outputs()
        if before is None or after is None or not _same(before, after):
            raise ShrinkError(f"Split into layers, {', '.join(names)} computed something else than before.",
                              "Report it with the model's code.")
        prefixes = tuple(f"{name}.layers." if name else "layers." for name in names)
        first = next(gs for gs in split.plan.group_sets if gs.kind != "feature" and gs.name.startswith(prefixes))
        trial = {gs.name: torch.arange(gs.size - (gs.width_key == first.width_key)) for gs in split.plan.group_sets}
        try:
            shrink_module_to(module, self.inputs, split.plan, trial, self.more_inputs)
        except ShrinkError as err:
            raise ShrinkError(f"With its layers of different widths the model's code does not run as before: "
                              f"{err.message}", "Leave iss.split_layers out (its layers then share one width), or "
                              "make the code use the states per layer (h_n[-1] works on the list it then gets)."
                              ) from err
        return split

    def _outputs(self) -> list[Tensor] | None:
        """The module's floating outputs on every example batch; None when its forward fails."""
        try:
            with torch.no_grad():
                return [t for batch in (self.inputs, *self.more_inputs)
                        for t in tree_flatten(self.module.eval()(*batch))[0] if isinstance(t, Tensor)]
        except Exception:  # noqa: BLE001 - any failure of the user's forward: the other reading is tried
            return None

    def check(self, state: Mapping[str, Tensor]) -> None:
        if self.module is None:
            return
        own = self.canonical(self.module.state_dict())
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected or wrong:
            raise ShapeError(f"The tensors do not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}, "
                             f"of another shape {wrong[:4]}.", "Save the model's state_dict() with the same names.")

    def build(self, state: Mapping[str, Tensor], dropout: float = 0.0, variational: bool = False) -> nn.Module:
        if self.module is None:
            raise CheckpointError("A model described only by a groups file cannot be run.",
                                  "Give its code with --arch FILE.py:FACTORY.")
        return resize_to(self.module, with_shared(state, self.aliases), self.stored_widths).eval()

    def probe_inputs(self, steps: int = 6, batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
        return self.inputs

    def probe_outputs(self, state: Mapping[str, Tensor]) -> list[Tensor | None]:
        if not self.runnable:
            return []
        batches = (self.inputs, *self.more_inputs)
        return float64_outputs(self.module, with_shared(state, self.aliases), batches, not self.made_by_shrink)

    def kept_outputs(self, outputs: list[Tensor | None], kept: Mapping[str, Tensor]) -> list[Tensor | None]:
        """An output whose labels say it carries hidden features keeps the kept units' positions (flattened)."""
        labels = self.plan.output_labels or []
        if not labels:
            return outputs
        chosen = []
        for index, output in enumerate(outputs):
            lab = labels[index % len(labels)]
            if output is not None and lab is not None and lab.shape == output.shape:
                output = output[kept_mask(_padding_as_units(lab), self.plan, kept).to(output.device)]
            chosen.append(output)
        return chosen

    def _layers(self) -> list[tuple[str, CellKind, LayerSpec, int]]:
        """(name, cell kind, shape, directions) of every recurrent layer, a multi-layer module's layers each."""
        layers = []
        for name, module, kind in self._recurrent():
            count, directions, hidden, proj, _ = recurrent_shape(module)
            width_in = module.input_size
            for layer in range(count):
                layers.append((name if is_cell(module) or count == 1 else f"{name} layer {layer}", kind,
                               LayerSpec(width_in, hidden, proj, getattr(module, "depth", 1)), directions))
                width_in = directions * (proj or hidden)
        return layers

    def layer_info(self) -> tuple[LayerInfo, ...]:
        return tuple(LayerInfo(index, kind.name, shape.input_size, shape.hidden_size, directions, shape.proj_size,
                               shape.depth, name) for index, (name, kind, shape, directions) in enumerate(self._layers()))

    def _shapes(self) -> dict[str, list[int]]:
        """Each parameter's shape, after removing the units ``sizes`` drops (a view for costs)."""
        named = dict(self.module.named_parameters())  # a shared parameter once
        shapes = {key: list(value.shape) for key, value in named.items()}
        for gs in self.plan.group_sets:
            gone = gs.size - self.sizes.get(gs.name, gs.size)
            for member in gs.members:
                if member.key in shapes:
                    shapes[member.key][member.axis] -= gone * len(member.starts)
        return shapes

    def _recurrent_keys(self) -> set[str]:
        return {f"{name}.{key}" if name else key for name, module, _ in self._recurrent()
                for key, _ in module.named_parameters()}

    def parameter_counts(self) -> dict[str, int]:
        if self.module is None:
            return {}
        recurrent, counts = self._recurrent_keys(), {"recurrent": 0, "other": 0}
        for key, shape in self._shapes().items():
            counts["recurrent" if key in recurrent else "other"] += math.prod(shape)
        return counts

    def macs_per_token(self) -> dict[str, int]:
        """Multiply-adds per time step: the recurrent layers' (one per matrix weight), and every nn.Linear's and
        nn.Conv1d's times how often it ran per time step of the first recurrent layer on the example inputs (a tagger's
        head once per token, a classifier's once per sequence); embedding lookups are free. Products of two computed
        tensors (attention scores over every pair of positions, their weighted sums) are ``attention``, as counted on
        the example inputs: per token they grow with the sequence length, so they hold at those inputs' lengths. A
        model described only by a groups file has not run: its other layers count 0."""
        if self.module is None:
            return {}
        recurrent, shapes = self._recurrent_keys(), self._shapes()
        other = sum(runs * math.prod(shapes[self.aliases.get(f"{path}.weight", f"{path}.weight")])
                    for path, runs in self._runs_per_token().items())
        macs = {"recurrent": sum(math.prod(shape) for key, shape in shapes.items()
                                 if key in recurrent and len(shape) == 2), "other": round(other)}
        steps = self._first_layer_positions()
        if self.plan.products and steps:  # attention: per token at the example inputs' lengths (it grows with them)
            macs["attention"] = round(self.plan.products / steps)
        return macs

    def _first_layer_positions(self) -> int:
        """Positions (batch x steps) the first recurrent layer called computed on the example inputs."""
        positions = self.plan.positions
        layers = [r.module for r in self.plan.ranges if r.kind != "feature" and r.module in positions]
        return positions[layers[0]] if layers else 0

    def _runs_per_token(self) -> dict[str, float]:
        """Positions each nn.Linear / nn.Conv1d computed per position of the first recurrent layer called."""
        positions, steps = self.plan.positions, self._first_layer_positions()
        layers = {r.module for r in self.plan.ranges if r.kind != "feature" and r.module in positions}
        if not steps:
            return {}
        return {path: count / steps for path, count in positions.items() if path not in layers}

    def to_dict(self) -> dict[str, Any]:
        """What the file records: the sets' widths, and whether width attributes (``self.nhid``) were resized with
        the layers, and which multi-layer modules were split into layers of their own widths — how the user's code
        reopens it: ``resize_to(split_layers(model, split), tensors, stored_widths=...)``."""
        return {"sets": {gs.name: gs.size for gs in self.plan.group_sets}, "stored_widths": self.stored_widths,
                **({"split": list(self.split)} if self.split else {})}



def _same(first: list[Tensor], second: list[Tensor]) -> bool:
    return len(first) == len(second) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, second))
