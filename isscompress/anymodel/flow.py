"""Follow every recurrent unit's output through a user's model, by running it once.

The model runs eagerly on the example inputs under a ``TorchFunctionMode`` (:mod:`.tracer`), so Python control
flow, packed sequences and any module structure simply execute. Beside every tensor that carries hidden features
we keep a *label tensor* of the same shape (:mod:`.labels`). Shape operations are applied to the labels as they
are to the values; zero-preserving elementwise operations keep them; sums and products of two units' features
*couple* the units (they must die together); reading weights (``linear``, ``conv1d``, a recurrent layer's input,
``x @ W``) make the weight's columns members of the unit's group. This module adds the recurrent modules
themselves: where their units are numbered, what their input weights read, how initial states couple units, and
the labels of their outputs. Anything else that touches a hidden feature is refused, naming the module and the
operation: a model returned by the any-model API is exact, never a guess.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import IsscompressError
from ..layers.cells import cell_of_module, recurrent_modules
from .labels import (
    FEATURE_MODULES,
    HINT,
    MATRIX_MODULES,
    UNLABELED,
    Flow,
    Position,
    TraceError,
    UnitRange,
    feature_axis,
    feature_width,
    is_cell,
    recurrent_shape,
    weight_name,
)
from .sharing import shared_names
from .tracer import Tracer

__all__ = ["HINT", "Flow", "Position", "TraceError", "UnitRange", "follow", "recurrent_shape"]


class _Tracer(Tracer):
    """The tracer, with the recurrent modules' own rules."""

    # ----- recurrent modules -----------------------------------------------------------------
    def ranges_for(self, path: str, module: nn.Module) -> list[UnitRange]:
        mine = [r for r in self.flow.ranges if r.module == path]
        if mine:
            return mine
        layers, directions, hidden, proj, _ = recurrent_shape(module)
        for layer in range(layers):
            for direction in range(directions):
                for kind, size in (("hidden", hidden), ("proj", proj)):
                    if size:
                        self.flow.ranges.append(UnitRange(path, layer, direction, kind, size, self.next_unit))
                        self.next_unit += size
        self.flow.modules[path] = module
        return [r for r in self.flow.ranges if r.module == path]

    def before_recurrent(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.busy = True
        try:
            path = self.names.get(id(module), "?")
            self.stack.append(path)
            ranges = self.ranges_for(path, module)
            layers, directions, hidden, proj, _ = recurrent_shape(module)
            x = args[0] if args else kwargs.get("input")
            data = x.data if isinstance(x, PackedSequence) else x
            if isinstance(data, Tensor) and data.dim():
                self.flow.positions[path] = self.flow.positions.get(path, 0) + data.numel() // data.shape[-1]
            labels = self.label_of(x)
            cell = cell_of_module(module)  # every weight the cell table says reads the layer's input
            for direction in range(directions):
                for name in [p.name for p in cell.params if p.cols == "input"] if cell else ["weight_ih"]:
                    weight = getattr(module, weight_name(module, name, 0, direction))
                    if labels is not None:
                        self.read_by_weight(x, weight, 1, -1, type(module).__name__)
                    else:
                        self.read_foreign(weight)
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            if hx is None:
                return
            states = hx if isinstance(hx, tuple) else (hx,)
            self.cell_state = is_cell(module)
            for state, kind in zip(states, ("proj" if proj else "hidden", "hidden")):
                self.initial_state(state, [r for r in ranges if r.kind == kind], directions)
        finally:
            self.busy = False
            self.inside_recurrent += 1

    def initial_state(self, state: Tensor, ranges: list[UnitRange], directions: int) -> None:
        labels = self.label_of(state)
        if self.is_filled(state):
            self.refuse("the initial state of a recurrent layer holds a fill constant at removed units (a removed "
                        "unit would not start at zero)")
        if labels is None and id(state) in self.input_leaves:  # handed in by the caller: the layer's own state
            labels = _state_labels(ranges, directions, state, self.cell_state)
            self.flow.input_labels[self.input_leaves[id(state)]] = labels
        if labels is None:
            self.refuse("the initial state of a recurrent layer is neither zeros made in forward, another recurrent "
                        "layer's state, nor a state passed in as one of the inputs (a learned state: a removed unit "
                        "would not start at zero)")
        for r in ranges:
            own = labels if self.cell_state else labels[r.layer * directions + r.direction]
            rows = own.reshape(-1, r.size).t()
            for f, unit in enumerate(self.reduce_rows(rows, "an initial state").tolist()):
                if unit == UNLABELED:
                    self.refuse(f"the initial state of `{r.name}` holds values that are not zero and not a "
                                "unit's state (a removed unit would not start at zero)")
                if unit >= 0:
                    self.couple(unit, r.first + f)

    def after_recurrent(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        self.inside_recurrent -= 1
        self.busy = True
        try:
            path = self.stack.pop()
            ranges = self.ranges_for(path, module)
            layers, directions, hidden, proj, _ = recurrent_shape(module)
            out_kind = "proj" if proj else "hidden"
            if is_cell(module):  # h' (and c') of one step: the cell's units along the last axis
                units = torch.cat([torch.arange(r.first, r.first + r.size) for r in ranges])
                for value in output if isinstance(output, tuple) else (output,):
                    self.set_label(value, units.expand(value.shape).contiguous())
                return
            sequence, state = output
            last = [r for r in ranges if r.layer == layers - 1 and r.kind == out_kind]
            features = torch.cat([torch.arange(r.first, r.first + r.size) for r in last])
            value = sequence.data if isinstance(sequence, PackedSequence) else sequence
            self.set_label(value, features.expand(value.shape).contiguous())
            states = state if isinstance(state, tuple) else (state,)
            for value, kind in zip(states, (out_kind, "hidden")):
                per_layer = torch.stack([
                    torch.arange(r.first, r.first + r.size)
                    for layer in range(layers) for r in ranges
                    if r.layer == layer and r.kind == kind
                ])  # (layers * directions, width): PyTorch's h_n order
                shape = (per_layer.shape[0],) + (1,) * (value.dim() - 2) + (per_layer.shape[1],)
                self.set_label(value, per_layer.reshape(shape).expand(value.shape).contiguous())
        finally:
            self.busy = False

    # ----- other widths ----------------------------------------------------------------------
    def after_feature(self, module: nn.Module, args: tuple, output: Any) -> None:
        """The output features of an embedding, Linear or Conv1d that is tried as a width: its own units."""
        if self.inside_recurrent or not isinstance(output, Tensor) or not output.is_floating_point():
            return
        path = self.names.get(id(module), "?")
        mine = [r for r in self.flow.ranges if r.module == path]
        if not mine:
            mine = [UnitRange(path, 0, 0, "feature", feature_width(module), self.next_unit)]
            self.flow.ranges.extend(mine)
            self.flow.modules[path] = module
            self.next_unit += mine[0].size
        units = torch.arange(mine[0].first, mine[0].first + mine[0].size)
        axis = feature_axis(module)
        shape = [1] * output.dim()
        shape[axis] = -1
        self.set_label(output, units.reshape(shape).expand(output.shape).contiguous())

    def count_positions(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Output positions of a Linear or Conv1d (rows it computed), for its multiply-adds per token."""
        if not self.inside_recurrent and isinstance(output, Tensor) and output.dim():
            path = self.names.get(id(module), "?")
            self.flow.positions[path] = self.flow.positions.get(path, 0) + \
                output.numel() // max(1, output.shape[feature_axis(module)])

    # ----- module names for messages ---------------------------------------------------------
    def enter(self, module: nn.Module, args: Any) -> None:
        if not isinstance(module, recurrent_modules()):
            self.stack.append(self.names.get(id(module), type(module).__name__))

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(module, recurrent_modules()) and self.stack:
            self.stack.pop()


def _state_labels(ranges: list[UnitRange], directions: int, state: Tensor, cell: bool = False) -> Tensor:
    """Labels of a ``(layers * directions, ..., width)`` state tensor: row ``l * directions + d`` holds the units of
    layer ``l``, direction ``d`` (PyTorch's h_n order)."""
    rows = sorted(ranges, key=lambda r: (r.layer, r.direction))
    per_row = torch.stack([torch.arange(r.first, r.first + r.size) for r in rows])
    if cell:  # a cell's state has no layer axis: (batch, width) or (width,)
        return per_row[0].expand(state.shape).contiguous()
    shape = (per_row.shape[0],) + (1,) * (state.dim() - 2) + (per_row.shape[1],)
    return per_row.reshape(shape).expand(state.shape).contiguous()


def _hooks(tracer: _Tracer, model: nn.Module, features: tuple[str, ...]) -> Iterator[Any]:
    yield nn.modules.module.register_module_forward_pre_hook(tracer.enter)
    yield nn.modules.module.register_module_forward_hook(tracer.leave)
    for module in model.modules():
        if isinstance(module, recurrent_modules()):
            yield module.register_forward_pre_hook(tracer.before_recurrent, with_kwargs=True)
            yield module.register_forward_hook(tracer.after_recurrent, with_kwargs=True)
    for path in features:
        yield model.get_submodule(path).register_forward_hook(tracer.after_feature)
    for module in model.modules():
        if type(module) in MATRIX_MODULES:
            yield module.register_forward_hook(tracer.count_positions)


def feature_candidates(model: nn.Module) -> list[str]:
    """The embeddings, Linears and Conv1ds whose output width could be a group set: not inside a recurrent module,
    not grouped convolutions, and not an embedding that shares its weight (a tied decoder's columns are the last
    layer's units already)."""
    firsts = set(shared_names(model).values())
    shared = {id(p) for name, p in model.named_parameters() if name in firsts}
    inside = {name for path, m in model.named_modules() if isinstance(m, recurrent_modules())
              for name, _ in m.named_modules(prefix=path) if name != path}
    return [path for path, m in model.named_modules()
            if type(m) in FEATURE_MODULES and path and path not in inside
            and getattr(m, "groups", 1) == 1 and id(m.weight) not in shared]


def follow(model: nn.Module, example_inputs: tuple, features: tuple[str, ...] = ()) -> Flow:
    """Run ``model(*example_inputs)`` (in eval mode, without gradients) and return what it found. A weight shared by
    an embedding and a reader of units (a tied decoder) takes a second run, in which the embedding's features carry
    the units of its columns. ``features``: the paths of embeddings, Linears and Conv1ds whose output features are
    units too (:func:`feature_candidates`).

    The labels live on the CPU, so a model on an accelerator is followed as a CPU copy (names and shapes, which
    are all a plan keeps, are the same)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
        example_inputs = tree_map(lambda v: v.cpu() if isinstance(v, Tensor) else v, example_inputs)
    flow = _follow_once(model, example_inputs, {}, features)
    if flow.tied_columns:
        flow = _follow_once(model, example_inputs, flow.tied_columns, features)
    return flow


def _follow_once(model: nn.Module, example_inputs: tuple, tied_columns: dict[int, Tensor],
                 features: tuple[str, ...]) -> Flow:
    tracer = _Tracer(model)
    tracer.tied_columns = tied_columns
    tracer.input_leaves = {id(leaf): index for index, leaf in enumerate(tree_flatten(example_inputs)[0])
                           if isinstance(leaf, Tensor) and leaf.is_floating_point()}
    handles = []
    was_training = model.training
    model.eval()
    try:
        handles = list(_hooks(tracer, model, features))
        with torch.no_grad(), tracer:
            output = model(*example_inputs)
        tracer.flow.output_labels = _labels_like(tracer, output)
    except TraceError:
        raise
    except IsscompressError:
        raise
    except Exception as err:  # the model's own failure, or an op our rules mishandle
        raise TraceError(f"Running the model on the example inputs failed while following its hidden units: "
                         f"{type(err).__name__}: {err}.", "Check that the example inputs are what forward takes; "
                         + HINT) from err
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return tracer.flow


def _labels_like(tracer: _Tracer, output: Any) -> Any:
    leaves, _ = tree_flatten(output)
    return [tracer.label_of(v) if isinstance(v, (Tensor, PackedSequence)) else None for v in leaves]
