"""The tracer: a ``TorchFunctionMode`` that runs a user's model and moves the label tensors beside the values
(see :mod:`.labels`) through every torch function — shape operations applied to the labels as to the values,
zero-preserving elementwise operations passing them, sums and products coupling units, weights that read units
becoming members of their groups, and anything else on a hidden feature refused by name. Recurrent modules
themselves are handled in :mod:`.flow`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .fills import WriteRules
from .labels import (
    COMPARISONS,
    FILLS,
    FRESH,
    HINT,
    MATMULS,
    METADATA,
    POOLING,
    PRODUCTS,
    REDUCTIONS,
    STRUCTURAL,
    SUMS,
    UNLABELED,
    ZERO,
    ZERO_PRESERVING,
    ZEROS,
    Flow,
    Position,
    TraceError,
    fill,
)
from .per_feature import PerFeatureRules
from .products import product_macs
from .sharing import parameter_names
from .reductions import SumRules


class Tracer(WriteRules, SumRules, PerFeatureRules, TorchFunctionMode):
    """Runs the model and keeps the label tensors beside the values (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.flow = Flow()
        self.labels: dict[int, tuple[Tensor, Tensor]] = {}  # id(value) -> (value kept alive, labels)
        self.names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
        self.param_names = parameter_names(model)
        self.buffer_names = {id(b): name for name, b in model.named_buffers()}
        self.stack: list[str] = []
        self.inside_recurrent = 0
        self.busy = False
        self.next_unit = 0
        self.input_leaves: dict[int, int] = {}  # id of an example-input tensor -> its leaf index
        self.cell_state = False  # the state being read is a cell's (no layer axis)
        # from a first run: the units that read each column of a tied weight, so that an embedding sharing it
        # gives its output features those units' labels (an embedding dimension is a decoder column)
        self.tied_columns: dict[int, Tensor] = {}
        self.filled: set[int] = set()  # ids of labelled values a non-zero fill may have written (see is_filled)

    # ----- bookkeeping -----------------------------------------------------------------------
    def is_weight(self, value: Tensor) -> bool:
        """Whether ``value`` is one of the model's parameters or buffers (not a value it computed)."""
        return id(value) in self.param_names or id(value) in self.buffer_names

    def label_of(self, value: Any) -> Tensor | None:
        if isinstance(value, PackedSequence):
            value = value.data
        entry = self.labels.get(id(value)) if isinstance(value, Tensor) else None
        return entry[1] if entry is not None and entry[0] is value else None

    def set_label(self, value: Tensor, labels: Tensor) -> None:
        if isinstance(value, Tensor) and value.is_floating_point() and labels.shape == value.shape:
            if bool((labels != UNLABELED).any()):
                self.labels[id(value)] = (value, labels)
            else:
                self.labels.pop(id(value), None)
                self.filled.discard(id(value))

    def couple(self, a: int, b: int, op: str = "an operation") -> None:
        """Units ``a`` and ``b`` must be removed together; two units of one layer never can be."""
        if a != b and self.flow.range_of(a) == self.flow.range_of(b):
            r = self.flow.range_of(a)
            self.refuse(f"{op} combines the features of units {a - r.first} and {b - r.first} of `{r.name}` (a sum, "
                        "a product, or one weight reading both after a reshape mixed the feature axis), so they "
                        "cannot be removed one by one")
        self.flow.couple(a, b)

    def where(self) -> str:
        return f"module `{self.stack[-1]}`" if self.stack and self.stack[-1] else "the model's forward"

    def refuse(self, what: str) -> None:
        raise TraceError(f"Cannot follow the hidden units exactly: in {self.where()}, {what}.", HINT)

    def unit_name(self, unit: int) -> str:
        r = self.flow.range_of(unit)
        return f"`{r.name}`"

    # ----- the mode --------------------------------------------------------------------------
    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.busy or self.inside_recurrent:
            return out
        self.busy = True
        try:
            self.flow.products += product_macs(getattr(func, "__name__", ""), args, kwargs, out, self.is_weight)
            self.propagate(func, args, kwargs, out)
        finally:
            self.busy = False
        return out

    def propagate(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        name = getattr(func, "__name__", str(func))
        if name in ZEROS:
            for value in tree_flatten(out)[0]:
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.labels[id(value)] = (value, fill(value, ZERO))
            return
        if name == "embedding" and self.tied_columns:  # an embedding tied to a weight that reads units
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            columns = self.tied_columns.get(id(weight))
            if columns is not None and isinstance(out, Tensor):
                labels = torch.where(columns >= 0, columns, UNLABELED)
                self.set_label(out, labels.expand(out.shape).contiguous())
            return
        leaves = tree_flatten((args, kwargs))[0]
        labeled = [v for v in leaves if isinstance(v, Tensor) and self.label_of(v) is not None]
        if name in ("linear", "conv1d") and args and self.label_of(args[0]) is None:
            self.read_foreign(kwargs.get("weight", args[1] if len(args) > 1 else None))
        if not labeled:
            return
        if name == "__get__":
            attr = getattr(getattr(func, "__self__", None), "__name__", "")
            if attr in ("data", "T", "mT") and isinstance(out, Tensor):
                self.set_label(out, getattr(self.label_of(args[0]), attr))
            return
        if name in METADATA or name in FRESH or name in COMPARISONS:
            return
        if name in FILLS:
            return self.fill(name, args, kwargs, out)
        filled = [v for v in labeled if self.is_filled(v)]
        if filled:
            self.check_filled(name, args, labeled)
        self.dispatch(func, name, args, kwargs, out, labeled)
        if filled:
            for value in tree_flatten(out)[0]:
                if self.label_of(value) is not None:
                    self.filled.add(id(value.data if isinstance(value, PackedSequence) else value))

    def dispatch(self, func: Callable, name: str, args: tuple, kwargs: dict, out: Any, labeled: list) -> None:
        """The rule for one torch function applied to hidden features."""
        if name in STRUCTURAL:
            return self.structural(func, name, args, kwargs, out)
        if name in ZERO_PRESERVING:
            if isinstance(out, Tensor):
                self.set_label(out, self.label_of(args[0]))
            return
        if name in PRODUCTS or name in SUMS:
            return self.elementwise(name, args, out)
        if name in REDUCTIONS:
            return self.reduction(name, args, kwargs, out)
        if name in MATMULS:
            return self.matmul(name, args, out)
        if name == "linear":
            return self.read_by_weight(args[0], kwargs.get("weight", args[1] if len(args) > 1 else None), 1, -1,
                                       "linear")
        if name == "conv1d":
            groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
            weight = kwargs.get("weight", args[1] if len(args) > 1 else None)
            if groups != 1 and isinstance(weight, Tensor) and groups == weight.shape[0] and weight.shape[1] == 1:
                return self.per_feature(args[0], (weight, kwargs.get("bias", args[2] if len(args) > 2 else None)),
                                        (), out, "a depthwise conv1d")
            if groups != 1:
                self.refuse("a grouped conv1d reads hidden features")
            return self.read_by_weight(args[0], weight, 1, 1, "conv1d")
        if name in POOLING:
            return self.pool(name, args, out)
        if name == "batch_norm":
            return self.per_feature_norm(args, kwargs, out)
        if not any(bool((self.label_of(v) >= 0).any()) for v in labeled):
            return  # only exact zeros (padding, zeros()) went in: nothing of a unit to follow
        self.refuse(f"`{name}` is applied to the hidden features of "
                    f"{self.unit_name(int(self.label_of(labeled[0]).clamp_min(0).max()))} "
                    "(isscompress only follows operations that keep a removed unit's features exactly zero "
                    "and in their own positions)")

    # ----- rules -----------------------------------------------------------------------------
    def structural(self, func: Callable, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        def substitute(value: Any) -> Any:
            if isinstance(value, PackedSequence):
                return value._replace(data=substitute(value.data))
            if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
                return type(value)(substitute(v) for v in value)
            if isinstance(value, Tensor) and value.is_floating_point():
                labels = self.label_of(value)
                return labels if labels is not None else fill(value, UNLABELED)
            return value

        label_args = [substitute(a) for a in args]
        label_kwargs = {k: substitute(v) for k, v in kwargs.items()}
        if name == "_pad_packed_sequence":
            label_args[3] = ZERO  # padding positions are exactly zero... if padding_value is
            if float(args[3]) != 0.0:
                self.refuse(f"pad_packed_sequence pads hidden features with {args[3]} instead of 0")
        if name == "pad":
            mode = kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            value = kwargs.get("value", args[3] if len(args) > 3 else None)
            if mode != "constant" or (value or 0.0) != 0.0:
                self.refuse(f"`pad` (mode {mode!r}, value {value}) pads hidden features with non-zeros")
            widths = kwargs.get("pad", args[1] if len(args) > 1 else None)  # given by position or by name
            label_args, label_kwargs = [label_args[0], widths, "constant", ZERO], {}
        label_out = func(*label_args, **label_kwargs)
        for value, labels in zip(tree_flatten(out)[0], tree_flatten(label_out)[0]):
            if isinstance(value, Tensor) and isinstance(labels, Tensor):
                self.set_label(value, labels)

    def operand_labels(self, value: Any) -> Tensor | None:
        """Labels of an operand; a Python number is unlabeled (None)."""
        if isinstance(value, Tensor):
            labels = self.label_of(value)
            return labels if labels is not None else fill(value, UNLABELED)
        return None

    def elementwise(self, name: str, args: tuple, out: Any) -> None:
        a, b = args[0], args[1] if len(args) > 1 else None
        if name.startswith("__r"):
            a, b = b, a
        la, lb = self.operand_labels(a), self.operand_labels(b)
        product = name in PRODUCTS
        if product and name not in ("mul", "__mul__", "__rmul__", "mul_", "__imul__") and \
                lb is not None and bool((lb >= 0).any()):
            self.refuse(f"`{name}` divides by hidden features of {self.unit_name(int(lb.max()))}")
        if la is None or lb is None:  # a Python number
            labels, number = (la, b) if la is not None else (lb, a)
            if not product and number != 0:
                self.refuse(f"`{name}` adds the constant {number} to hidden features of "
                            f"{self.unit_name(int(labels.max()))}")
            return self.set_label(out, labels)
        for weight, other in ((a, lb), (b, la)):
            if isinstance(weight, nn.Parameter) and self.label_of(weight) is None:
                self.hold_by_weight(weight, other, name)
                return self.set_label(out, other.expand(out.shape).contiguous())
        la, lb = torch.broadcast_tensors(la, lb)
        both = (la >= 0) & (lb >= 0)
        for x, y in torch.stack([la[both], lb[both]], 1).unique(dim=0).tolist() if bool(both.any()) else []:
            self.couple(x, y)
        if not product:
            mixed = ((la >= 0) & (lb == UNLABELED)) | ((lb >= 0) & (la == UNLABELED))
            if bool(mixed.any()):
                unit = int(torch.where(la >= 0, la, lb)[mixed][0])
                self.refuse(f"`{name}` combines hidden features of {self.unit_name(unit)} with values that are not "
                            "hidden features (a removed unit's position would not be zero)")
        if product:
            labels = torch.where(la >= 0, la, torch.where(lb >= 0, lb, torch.where(
                (la == ZERO) | (lb == ZERO), ZERO, UNLABELED)))
        else:
            labels = torch.where(la >= 0, la, torch.where(lb >= 0, lb, torch.where(
                (la == ZERO) & (lb == ZERO), ZERO, UNLABELED)))
        if isinstance(out, Tensor):
            self.set_label(out, labels.expand(out.shape) if labels.shape != out.shape else labels)

    def read_by_weight(self, x: Any, weight: Any, weight_axis: int, x_axis: int, op: str) -> None:
        """``weight``'s slices along ``weight_axis`` read ``x``'s features along ``x_axis``: make them members."""
        labels = self.label_of(x)
        if labels is None:
            return
        if not isinstance(weight, nn.Parameter) or id(weight) not in self.param_names:
            self.refuse(f"`{op}` reads hidden features with a weight that is not a parameter of the model")
        names = self.param_names[id(weight)]
        columns = self.reduce_rows(labels.movedim(x_axis, -1).reshape(-1, labels.shape[x_axis]).t(),
                                   f"`{op}` with `{names[0]}`")
        if len(names) > 1:  # tied: one member under the first name, the others aliases of it
            if weight_axis != 1:
                self.refuse(f"`{op}` reads hidden features with rows of a weight shared by {', '.join(names)}")
            self.flow.aliases.update({alias: names[0] for alias in names[1:]})
            self.flow.tied_columns[id(weight)] = columns.clamp_min(-1)
        reader = self.stack[-1] if self.stack and self.stack[-1] else names[0]
        for index, unit in enumerate(columns.tolist()):
            if unit >= 0:
                self.add_reader(unit, (names[0], weight_axis, index), reader)
            elif unit == UNLABELED:
                self.flow.foreign.add((names[0], weight_axis, index))

    def read_foreign(self, weight: Any) -> None:
        """``weight`` read values that are no unit's features along its input axis (1) in this call."""
        for name in self.param_names.get(id(weight), [])[:1]:
            self.flow.foreign.update((name, 1, index) for index in range(weight.shape[1]))

    def hold_by_weight(self, weight: nn.Parameter, labels: Tensor, op: str) -> None:
        """An elementwise ``h * w`` or ``h + b`` with a parameter: each element of the parameter meets one unit
        and joins its group (so it is zero, or removed, with the unit)."""
        names = self.param_names.get(id(weight), [])
        if len(names) != 1:
            self.refuse(f"`{op}` combines hidden features with a tensor that is not one parameter of the model")
        axes = [axis for axis, size in enumerate(weight.shape) if size > 1]
        if len(axes) > 1:
            self.refuse(f"`{op}` combines hidden features with `{names[0]}`, a parameter of more than one axis")
        for position, unit in enumerate(self.units_per_element(tuple(weight.shape), labels,
                                                               f"`{op}` with `{names[0]}`").tolist()):
            if unit >= 0:
                self.add_reader(unit, (names[0], axes[0] if axes else 0, position), names[0])

    def add_reader(self, unit: int, position: Position, reader: str) -> None:
        self.flow.readers.setdefault(unit, set()).add(position)
        self.flow.consumers.setdefault(self.flow.range_of(unit).name, set()).add(reader)
