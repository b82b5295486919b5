"""Follow every recurrent unit's output through a user's model, by running it once.

The model runs eagerly on the example inputs under a ``TorchFunctionMode``, so Python control flow,
packed sequences and any module structure simply execute. Beside every tensor that carries hidden
features we keep a *label tensor* of the same shape: element ``[...]`` holds the id of the recurrent
unit whose output that element is, ``UNLABELED`` for values that are not a unit's output, or ``ZERO``
for values that are exactly zero whatever the units (padding, ``torch.zeros``). Shape operations
(indexing, cat, split, transpose, reshape, pack/pad, ...) are applied to the labels as they are to the
values; zero-preserving elementwise operations keep them; sums and products of two units' features
*couple* the units (they must die together); reading weights (``linear``, ``conv1d``, a recurrent
layer's input, ``x @ W``) make the weight's columns members of the unit's group. Anything else that
touches a hidden feature is refused, naming the module and the operation: a model returned by the
any-model API is exact, never a guess.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import IsscompressError

UNLABELED = -1
ZERO = -2

Position = tuple[str, int, int]  # (state-dict key, axis, index)


class TraceError(IsscompressError):
    """The model does something to a hidden feature that ISS cannot follow exactly."""


HINT = ("Declare the groups by hand in a YAML groups file (isscompress.Plan.save writes one to start from) "
        "or change the model so that hidden features reach weights through the supported operations "
        "(docs/any-model.md).")

# Operations applied to the label tensor exactly as to the value: they move, copy or select elements.
STRUCTURAL = frozenset("""
__getitem__ view reshape flatten unflatten squeeze unsqueeze transpose swapaxes swapdims permute t contiguous
clone detach cat concat concatenate stack hstack split split_with_sizes chunk tensor_split narrow select
index_select expand expand_as repeat flip movedim moveaxis unbind roll view_as reshape_as
_pack_padded_sequence _pad_packed_sequence pad
""".split())
# Elementwise and zero in, zero out: the labels pass through unchanged.
ZERO_PRESERVING = frozenset("""
relu relu_ tanh tanh_ dropout dropout_ alpha_dropout feature_alpha_dropout dropout1d dropout2d gelu elu elu_
leaky_relu leaky_relu_ selu silu mish hardtanh hardtanh_ relu6 softsign tanhshrink neg __neg__ abs sign square
sqrt to type float double half bfloat16 cpu cuda requires_grad_ __pos__
""".split())
PRODUCTS = frozenset("mul __mul__ __rmul__ mul_ __imul__ div __truediv__ true_divide div_ __itruediv__".split())
SUMS = frozenset("add __add__ __radd__ add_ __iadd__ sub __sub__ __rsub__ sub_ __isub__ maximum minimum".split())
REDUCTIONS = frozenset("sum mean max min amax amin nansum nanmean".split())
MATMULS = frozenset("matmul __matmul__ __rmatmul__ mm bmm".split())
ZEROS = frozenset("zeros zeros_like new_zeros".split())
POOLING = frozenset("max_pool1d avg_pool1d adaptive_max_pool1d adaptive_avg_pool1d lp_pool1d".split())
FRESH = frozenset("ones_like empty_like full_like rand_like randn_like randint_like new_ones new_full new_empty "
                  "new_tensor".split())  # new values shaped like their input: not hidden features
METADATA = frozenset("""
size dim numel __len__ is_contiguous is_floating_point element_size stride __get__ __format__ __bool__ item
tolist __index__ __repr__ __hash__ data_ptr get_device _is_view nelement ndimension
""".split())
RECURRENT = (nn.LSTM, nn.GRU, nn.RNN)


@dataclass(frozen=True)
class UnitRange:
    """The units of one direction of one layer of a recurrent module: global ids ``first .. first+size-1``.

    ``kind`` is ``hidden`` (the cells) or ``proj`` (an LSTM's projected outputs, ``proj_size``)."""

    module: str
    layer: int
    direction: int
    kind: str
    size: int
    first: int

    @property
    def name(self) -> str:
        where = f"{self.module}.l{self.layer}" if self.module else f"l{self.layer}"
        return where + (".reverse" if self.direction else "") + (".proj" if self.kind == "proj" else "")

    def contains(self, unit: int) -> bool:
        return self.first <= unit < self.first + self.size


@dataclass
class Flow:
    """What one run found: the unit ranges of every recurrent module it called, the weight positions that
    read each unit (beyond the module's own), the couplings, and the labels of the model's outputs."""

    ranges: list[UnitRange] = field(default_factory=list)
    readers: dict[int, set[Position]] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)  # union-find over unit ids
    consumers: dict[str, set[str]] = field(default_factory=dict)  # range name -> modules/weights reading it
    output_labels: Any = None
    modules: dict[str, nn.Module] = field(default_factory=dict)  # recurrent module path -> module

    def find(self, unit: int) -> int:
        root = unit
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(unit, unit) != root:  # path compression
            self.parent[unit], unit = root, self.parent[unit]
        return root

    def couple(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def range_of(self, unit: int) -> UnitRange:
        for r in self.ranges:
            if r.contains(unit):
                return r
        raise KeyError(unit)


def recurrent_shape(module: nn.Module) -> tuple[int, int, int, int, int]:
    """(layers, directions, hidden, proj, gates) of an nn.LSTM / nn.GRU / nn.RNN."""
    hidden = module.hidden_size
    proj = getattr(module, "proj_size", 0) or 0
    gates = module.weight_ih_l0.shape[0] // hidden
    return module.num_layers, 2 if module.bidirectional else 1, hidden, proj, gates


def _uniform_along(labels: Tensor, axis: int) -> Tensor | None:
    """``labels`` reduced over ``axis`` when every line along it holds one label (exact zeros aside)."""
    known = labels != ZERO
    big = torch.iinfo(torch.long).max
    low = torch.where(known, labels, big).amin(axis)
    high = torch.where(known, labels, -big).amax(axis)
    if bool((known.any(axis) & (low != high)).any()):
        return None
    return torch.where(known.any(axis), low, ZERO)


def _fill(like: Tensor, value: int) -> Tensor:
    return torch.full(like.shape, value, dtype=torch.long)


class _Tracer(TorchFunctionMode):
    """Runs the model and keeps the label tensors beside the values (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.flow = Flow()
        self.labels: dict[int, tuple[Tensor, Tensor]] = {}  # id(value) -> (value kept alive, labels)
        self.names = {id(m): name for name, m in model.named_modules(remove_duplicate=False)}
        self.param_names: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.param_names.setdefault(id(p), []).append(name)
        self.stack: list[str] = []
        self.inside_recurrent = 0
        self.busy = False
        self.next_unit = 0

    # ----- bookkeeping -----------------------------------------------------------------------
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
            self.propagate(func, args, kwargs, out)
        finally:
            self.busy = False
        return out

    def propagate(self, func: Callable, args: tuple, kwargs: dict, out: Any) -> None:
        name = getattr(func, "__name__", str(func))
        if name in ZEROS:
            for value in tree_flatten(out)[0]:
                if isinstance(value, Tensor) and value.is_floating_point():
                    self.labels[id(value)] = (value, _fill(value, ZERO))
            return
        leaves = tree_flatten((args, kwargs))[0]
        labeled = [v for v in leaves if isinstance(v, Tensor) and self.label_of(v) is not None]
        if not labeled:
            return
        if name == "__get__":
            attr = getattr(getattr(func, "__self__", None), "__name__", "")
            if attr in ("data", "T", "mT") and isinstance(out, Tensor):
                self.set_label(out, getattr(self.label_of(args[0]), attr))
            return
        if name in METADATA or name in FRESH:
            return
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
            if groups != 1:
                self.refuse("a grouped conv1d reads hidden features")
            return self.read_by_weight(args[0], kwargs.get("weight", args[1]), 1, 1, "conv1d")
        if name in POOLING:
            return self.pool(name, args, out)
        if name == "masked_fill" and float(args[2] if len(args) > 2 else kwargs.get("value", 0)) == 0.0:
            return self.set_label(out, self.label_of(args[0]))
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
                return labels if labels is not None else _fill(value, UNLABELED)
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
            label_kwargs.pop("value", None)
            label_args = label_args[:2] + ["constant", ZERO]
        label_out = func(*label_args, **label_kwargs)
        for value, labels in zip(tree_flatten(out)[0], tree_flatten(label_out)[0]):
            if isinstance(value, Tensor) and isinstance(labels, Tensor):
                self.set_label(value, labels)

    def operand_labels(self, value: Any) -> Tensor | None:
        """Labels of an operand; a Python number is unlabeled (None)."""
        if isinstance(value, Tensor):
            labels = self.label_of(value)
            return labels if labels is not None else _fill(value, UNLABELED)
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

    def reduce_rows(self, rows: Tensor, what: str) -> Tensor:
        """One label per row of ``rows`` (…, r): the units met along a reduced axis are coupled.

        A row of units (and exact zeros) becomes its unit; a row that mixes units with other values is
        refused (a removed unit would leave a non-zero result); a row of other values stays unlabeled."""
        flat = rows.reshape(-1, rows.shape[-1])
        is_unit = flat >= 0
        big = torch.iinfo(torch.long).max
        low = torch.where(is_unit, flat, big).min(1).values
        high = torch.where(is_unit, flat, -1).max(1).values
        has_unit = high >= 0
        mixed = has_unit & (flat == UNLABELED).any(1)
        if bool(mixed.any()):
            self.refuse(f"{what} mixes hidden features of {self.unit_name(int(low[mixed][0]))} with other values")
        for row in (has_unit & (low != high)).nonzero().squeeze(1).tolist():
            for other in flat[row][is_unit[row]].unique().tolist():
                self.couple(int(low[row]), other, what)
        all_zero = (flat == ZERO).all(1)
        result = torch.where(has_unit, low, torch.where(all_zero, ZERO, UNLABELED))
        return result.reshape(rows.shape[:-1])

    def reduction(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if isinstance(dim, Tensor):  # torch.max(a, b): elementwise
            return self.elementwise("maximum" if name == "max" else "minimum", args, out)
        labels = self.label_of(x)
        if dim is None:
            self.refuse(f"`{name}` reduces over all elements of hidden features")
        dims = [d % x.dim() for d in (dim if isinstance(dim, (list, tuple)) else [dim])]
        keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
        rest = [d for d in range(x.dim()) if d not in dims]
        moved = labels.permute(*rest, *dims)
        rows = moved.reshape(*moved.shape[: len(rest)], -1)
        reduced = self.reduce_rows(rows, f"`{name}` over dims {dims}")
        if keepdim:
            for d in dims:
                reduced = reduced.unsqueeze(d)
        values = out[0] if isinstance(out, tuple) else out
        self.set_label(values, reduced)

    def matmul(self, name: str, args: tuple, out: Any) -> None:
        """``a @ b``: units on the free axes carry over (``softmax(S) @ u``); units on the contracted axis
        must meet the same units on the other side (``h @ u.T`` couples them) or a weight (``h @ W``)."""
        a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
        if isinstance(b, nn.Parameter) and self.label_of(b) is None:  # h @ W, or h @ w (attention scores)
            return self.read_by_weight(a, b, 0, -1, name)
        if a.dim() < 2 or b.dim() < 2:
            self.refuse(f"`{name}` with a vector operand that is not a parameter reads hidden features")
        la, lb = self.operand_labels(a), self.operand_labels(b)
        row_a, contracted_a = self.matmul_side(la, name, free_axis=-2)
        col_b, contracted_b = self.matmul_side(lb, name, free_axis=-1)
        if contracted_a is not None or contracted_b is not None:
            if contracted_a is None or contracted_b is None:
                self.refuse(f"`{name}` contracts hidden features with values that are neither hidden features of "
                            "the same units nor a weight")
            for x, y in zip(contracted_a.tolist(), contracted_b.tolist()):
                if x >= 0 and y >= 0:
                    self.couple(x, y)
                elif (x >= 0 and y == UNLABELED) or (y >= 0 and x == UNLABELED):
                    self.refuse(f"`{name}` contracts hidden features with values that are not hidden features")
            return  # every feature is summed into the result: it is not a hidden feature any more
        row, col = row_a.unsqueeze(-1), col_b.unsqueeze(-2)
        if bool(((row >= 0) & (col >= 0)).any()):
            self.refuse(f"`{name}` multiplies hidden features by hidden features on free axes")
        labels = torch.where(row >= 0, row, torch.where(col >= 0, col, UNLABELED))
        self.set_label(out, labels.expand(out.shape).contiguous())

    def pool(self, name: str, args: tuple, out: Any) -> None:
        """Pooling over time of ``(batch, features, time)``: zero stays zero, so the features keep their units as
        long as each feature is one unit along the pooled axis."""
        labels = self.label_of(args[0])
        per_channel = _uniform_along(labels, -1)
        if per_channel is None:
            self.refuse(f"`{name}` pools over an axis along which the hidden features change units")
        value = out[0] if isinstance(out, tuple) else out
        self.set_label(value, per_channel.unsqueeze(-1).expand(value.shape).contiguous())

    def matmul_side(self, labels: Tensor, name: str, free_axis: int) -> tuple[Tensor, Tensor | None]:
        """One operand of a matmul: (labels of its free axis), and the labels of its contracted axis when
        its units lie along that one (None when they do not)."""
        contract_axis = -1 if free_axis == -2 else -2
        along = _uniform_along(labels, contract_axis)
        if along is not None:
            return along, None
        per_position = labels.movedim(contract_axis, 0).reshape(labels.shape[contract_axis], -1)
        return torch.full(labels.narrow(contract_axis, 0, 1).squeeze(contract_axis).shape, UNLABELED), \
            self.reduce_rows(per_position, name)

    def read_by_weight(self, x: Any, weight: Any, weight_axis: int, x_axis: int, op: str) -> None:
        """``weight``'s slices along ``weight_axis`` read ``x``'s features along ``x_axis``: make them members."""
        labels = self.label_of(x)
        if labels is None:
            return
        if not isinstance(weight, nn.Parameter) or id(weight) not in self.param_names:
            self.refuse(f"`{op}` reads hidden features with a weight that is not a parameter of the model")
        names = self.param_names[id(weight)]
        if len(names) > 1:
            self.refuse(f"`{op}` reads hidden features with a weight shared by {', '.join(names)} "
                        "(tied weights are supported by the language-model path, not by the any-model API)")
        columns = self.reduce_rows(labels.movedim(x_axis, -1).reshape(-1, labels.shape[x_axis]).t(),
                                   f"`{op}` with `{names[0]}`")
        reader = self.stack[-1] if self.stack and self.stack[-1] else names[0]
        for index, unit in enumerate(columns.tolist()):
            if unit >= 0:
                self.add_reader(unit, (names[0], weight_axis, index), reader)

    def hold_by_weight(self, weight: nn.Parameter, labels: Tensor, op: str) -> None:
        """An elementwise ``h * w`` or ``h + b`` with a parameter: each element of the parameter meets one unit
        and joins its group (so it is zero, or removed, with the unit)."""
        names = self.param_names.get(id(weight), [])
        if len(names) != 1:
            self.refuse(f"`{op}` combines hidden features with a tensor that is not one parameter of the model")
        axes = [axis for axis, size in enumerate(weight.shape) if size > 1]
        if len(axes) > 1:
            self.refuse(f"`{op}` combines hidden features with `{names[0]}`, a parameter of more than one axis")
        index = torch.arange(weight.numel()).reshape(weight.shape)
        index, labels = torch.broadcast_tensors(index, labels)
        order = index.flatten().argsort(stable=True)
        per_element = labels.flatten()[order].reshape(weight.numel(), -1)
        for position, unit in enumerate(self.reduce_rows(per_element, f"`{op}` with `{names[0]}`").tolist()):
            if unit >= 0:
                self.add_reader(unit, (names[0], axes[0] if axes else 0, position), names[0])

    def add_reader(self, unit: int, position: Position, reader: str) -> None:
        self.flow.readers.setdefault(unit, set()).add(position)
        self.flow.consumers.setdefault(self.flow.range_of(unit).name, set()).add(reader)

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
            labels = self.label_of(x)
            if labels is not None:
                for direction in range(directions):
                    key = f"weight_ih_l0{'_reverse' if direction else ''}"
                    self.read_by_weight(x, getattr(module, key), 1, -1, type(module).__name__)
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            if hx is None:
                return
            states = hx if isinstance(hx, tuple) else (hx,)
            for state, kind in zip(states, ("proj" if proj else "hidden", "hidden")):
                self.initial_state(state, [r for r in ranges if r.kind == kind], directions)
        finally:
            self.busy = False
            self.inside_recurrent += 1

    def initial_state(self, state: Tensor, ranges: list[UnitRange], directions: int) -> None:
        labels = self.label_of(state)
        if labels is None:
            self.refuse("the initial state of a recurrent layer is neither zeros made in forward nor another "
                        "recurrent layer's state (a removed unit would not start at zero)")
        for r in ranges:
            rows = labels[r.layer * directions + r.direction].reshape(-1, r.size).t()
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

    def refuse_cell(self, module: nn.Module, args: Any) -> None:
        raise TraceError(f"Module `{self.names.get(id(module))}` is an {type(module).__name__} stepped by the model's "
                         "own loop; isscompress follows nn.LSTM, nn.GRU and nn.RNN, not cells yet.", HINT)

    # ----- module names for messages ---------------------------------------------------------
    def enter(self, module: nn.Module, args: Any) -> None:
        if not isinstance(module, RECURRENT):
            self.stack.append(self.names.get(id(module), type(module).__name__))

    def leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(module, RECURRENT) and self.stack:
            self.stack.pop()


def _hooks(tracer: _Tracer, model: nn.Module) -> Iterator[Any]:
    yield nn.modules.module.register_module_forward_pre_hook(tracer.enter)
    yield nn.modules.module.register_module_forward_hook(tracer.leave)
    for module in model.modules():
        if isinstance(module, RECURRENT):
            yield module.register_forward_pre_hook(tracer.before_recurrent, with_kwargs=True)
            yield module.register_forward_hook(tracer.after_recurrent, with_kwargs=True)
        elif isinstance(module, nn.RNNCellBase):
            yield module.register_forward_pre_hook(tracer.refuse_cell)


def follow(model: nn.Module, example_inputs: tuple) -> Flow:
    """Run ``model(*example_inputs)`` once (in eval mode, without gradients) and return what it found.

    The labels live on the CPU, so a model on an accelerator is followed as a CPU copy (names and shapes, which
    are all a plan keeps, are the same)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
        example_inputs = tree_map(lambda v: v.cpu() if isinstance(v, Tensor) else v, example_inputs)
    tracer = _Tracer(model)
    handles = []
    was_training = model.training
    model.eval()
    try:
        handles = list(_hooks(tracer, model))
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
