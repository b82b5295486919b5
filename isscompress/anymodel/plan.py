"""A plan: the ISS group sets of a user's model, found by following its units or declared in YAML.

Every unit's group is the positions of its own recurrent weights (rows of the gate blocks, its column
of ``weight_hh``, the next layer's input columns) plus every weight position that reads it
(:mod:`.flow`). Coupled units (a sum of two layers' features, a state handed to another layer) share one
group. Runs of consecutive units whose groups are the same positions shifted by one become one
:class:`GroupSet`, so regularisation, thresholding and surgery are the language-model path's own code.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

import torch
import yaml
from torch import Tensor, nn

from ..layers.cells import cell_of_module
from ..core.groups import GroupSet, Member
from ..outputs import atomic_write, check_output_path
from .groups_file import GROUPS_FORMAT, check_plan_members, parse_groups, read_groups_text
from .flow import HINT, Flow, Position, TraceError, UnitRange, feature_candidates, follow, recurrent_shape
from .labels import feature_positions, weight_name

@dataclass
class Plan:
    """The ISS group sets of one model, with what the trace learned about them (for printing)."""

    group_sets: tuple[GroupSet, ...]
    ranges: list[UnitRange] = field(default_factory=list)
    consumers: dict[str, set[str]] = field(default_factory=dict)
    output_labels: Any = None
    unit_sets: dict[int, tuple[str, int]] = field(default_factory=dict)  # unit id -> (set name, index in set)
    input_labels: dict[int, Tensor] = field(default_factory=dict)  # example-input leaf -> its units (passed states)
    aliases: dict[str, str] = field(default_factory=dict)  # another name of a shared weight -> its member name
    positions: dict[str, int] = field(default_factory=dict)  # positions each Linear/Conv1d/recurrent module computed
    products: int = 0  # multiply-adds of products of two computed tensors (attention) on the example inputs
    left_whole: dict[str, str] = field(default_factory=dict)  # a candidate width not offered -> why (for inspect)

    def __str__(self) -> str:
        return self.describe()

    def readers(self, set_name: str) -> list[str]:
        """The modules or weights outside the recurrent layers that read the units of one set."""
        ranges = {r.name for r in self.ranges for u in range(r.first, r.first + r.size)
                  if self.unit_sets.get(u, ("",))[0] == set_name}
        return sorted({c for name in ranges for c in self.consumers.get(name, ())})

    def describe(self) -> str:
        """One line per group set: width, tensors it spans, who reads its units, what it is coupled with."""
        lines = []
        for gs in self.group_sets:
            keys = sorted({m.key for m in gs.members})
            readers = self.readers(gs.name)
            rule = f" same width as `{gs.same_width_as}`" if gs.same_width_as else ""
            rule += f", narrower than `{gs.narrower_than}`" if gs.narrower_than else ""
            lines.append(f"{gs.name}: {gs.size} units{rule}; {len(keys)} tensors"
                         + (f"; read by {', '.join(readers)}" if readers else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": GROUPS_FORMAT, "sets": [
            {"name": gs.name, "size": gs.size, "same_width_as": gs.same_width_as, "narrower_than": gs.narrower_than,
             "kind": gs.kind, "members": [{"key": m.key, "axis": m.axis, "starts": list(m.starts)} for m in gs.members],
             **({"carried": [{"key": m.key, "axis": m.axis, "starts": list(m.starts)} for m in gs.carried]}
                if gs.carried else {})}
            for gs in self.group_sets]}

    def save(self, path: str | Path, *, force: bool = True, inputs: tuple[Path, ...] = ()) -> Path:
        """Write the group sets as a YAML groups file (for review, editing, or a model tracing cannot follow),
        atomically; never over one of ``inputs``, nor (without ``force``) over an existing file."""
        output = check_output_path(path, force=force, inputs=inputs)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, width=120)
        atomic_write(output, lambda temporary: temporary.write_text(text))
        return output


def load_groups(path: str | Path, state: Mapping[str, Tensor] | None = None) -> Plan:
    """Read a YAML groups file; with ``state``, check every member against the tensors it names."""
    path = Path(path)
    plan = Plan(parse_groups(read_groups_text(path), str(path)))
    if state is not None:
        check_plan(plan, state, str(path))
    return plan


def check_plan(plan: Plan, state: Mapping[str, Tensor], where: str) -> None:
    """Every member names a tensor of ``state`` and fits inside it."""
    check_plan_members(plan.group_sets, state, where)


def own_positions(r: UnitRange, module_path: str, module: nn.Module, unit: int) -> set[Position]:
    """The positions a recurrent layer's own weights hold for its unit ``unit`` (0-based in the range), read off the
    cell table's parameter declarations as the language-model stack reads them: the rows of every gate block (or of
    the projection) it produces, the columns that read it back, and the next layer's input columns. A feature unit's
    own position is its embedding column, or its Linear's or Conv1d's output row and bias element."""
    if r.kind == "feature":
        return feature_positions(module, module_path, unit)
    layers, directions, hidden, proj, gates = recurrent_shape(module)
    cell = cell_of_module(module)
    prefix = f"{module_path}." if module_path else ""
    shape = SimpleNamespace(input_size=0, hidden_size=hidden, proj_size=proj, depth=getattr(module, "depth", 1))
    params = cell.layer_params(shape, bias=bool(module.bias))  # nn.RNNBase, its cells and ours keep a bias flag
    key = lambda name, layer=r.layer, direction=r.direction: prefix + weight_name(module, name, layer, direction)  # noqa: E731
    rows, cols = ("gates", "hidden" if proj else "recurrent") if r.kind == "hidden" else ("proj", "recurrent")
    own_rows = {rows, *(["units"] if rows == "gates" else [])}  # a cell's set also owns its units' own values
    own_cols = {cols, *(["units"] if rows == "gates" else [])}
    out = set()
    for p in params:
        if p.rows in own_rows:
            out |= {(key(p.name), 0, g * hidden + unit) for g in range(gates)} if p.rows == "gates" \
                else {(key(p.name), 0, unit)}
        if p.cols in own_cols:
            out.add((key(p.name), 1, unit))
    if r.kind == ("proj" if proj else "hidden") and r.layer + 1 < layers:
        for p in (p for p in params if p.cols == "input"):
            for direction in range(directions):
                out.add((key(p.name, r.layer + 1, direction), 1, r.direction * (proj or hidden) + unit))
    return out


def _shifted(positions: frozenset[Position]) -> frozenset[Position]:
    return frozenset((key, axis, index + 1) for key, axis, index in positions)


def _class_positions(flow: Flow, classes: dict[int, list[int]]) -> dict[int, frozenset[Position]]:
    """Every weight position of each class of coupled units: the layers' own rows and columns, and their readers."""
    positions: dict[int, frozenset[Position]] = {}
    for root, members in classes.items():
        seen_ranges: dict[str, int] = {}
        found: set[Position] = set()
        for unit in members:
            r = flow.range_of(unit)
            if r.name in seen_ranges:
                raise TraceError(f"Units {seen_ranges[r.name]} and {unit - r.first} of `{r.name}` are coupled (their "
                                 "features are summed or multiplied together), so they cannot be removed one by one.",
                                 HINT)
            seen_ranges[r.name] = unit - r.first
            found |= own_positions(r, r.module, flow.modules[r.module], unit - r.first)
            found |= flow.readers.get(unit, set())
            for key, axis, index in sorted(flow.readers.get(unit, set()) & flow.foreign)[:1]:
                raise TraceError(f"`{key}` reads the features of `{r.name}` (its {'column' if axis else 'row'} "
                                 f"{index}) in one call and values that are no unit's in another, so that "
                                 "position cannot be removed with the unit.", HINT)
        positions[root] = frozenset(found)
    return positions


def build_plan(flow: Flow) -> Plan:
    """Group sets from a flow: classes of coupled units, chained into runs of consecutive units."""
    units = [r.first + f for r in flow.ranges for f in range(r.size)]
    classes: dict[int, list[int]] = {}
    for unit in units:
        classes.setdefault(flow.find(unit), []).append(unit)
    positions = _class_positions(flow, classes)
    successor = _successors(flow, classes, positions)
    heads = sorted(set(classes) - set(successor.values()))

    chains = []
    for head in heads:
        chain = [head]
        while chain[-1] in successor:
            chain.append(successor[chain[-1]])
        chains.append(chain)
    width_root = _width_roots(flow, [classes[chain[0]] for chain in chains])

    sets, unit_sets = [], {}
    for chain in chains:
        head_units = sorted(classes[chain[0]])
        head_ranges = [flow.range_of(u) for u in head_units]
        name = "+".join(_slice_name(r, u - r.first, len(chain)) for r, u in zip(head_ranges, head_units))
        grouped: dict[tuple[str, int], list[int]] = {}
        for key, axis, index in positions[chain[0]]:
            grouped.setdefault((key, axis), []).append(index)
        found = [Member(key, axis, tuple(sorted(starts))) for (key, axis), starts in sorted(grouped.items())]
        members = tuple(m for m in found if m.key not in flow.carried_keys)
        carried = tuple(m for m in found if m.key in flow.carried_keys)
        r0 = head_ranges[0]
        narrower = width_root(_width_key(r0, "hidden")) if r0.kind == "proj" else ""
        feature = r0.kind == "feature"  # a width of its own (no module forces it equal to another)
        sets.append(GroupSet(name, len(chain), members, "" if feature else width_root(_width_key(r0)), narrower,
                             label=name, kind="feature" if feature else "recurrent", carried=carried))
        for index, root in enumerate(chain):
            for unit in classes[root]:
                unit_sets[unit] = (name, index)
    _check_uniform(flow, sets, unit_sets)
    sets.sort(key=lambda gs: gs.kind == "feature")  # the recurrent layers first, as before other widths had sets
    return Plan(tuple(sets), list(flow.ranges), flow.consumers, flow.output_labels, unit_sets, flow.input_labels,
                flow.aliases, flow.positions, products=flow.products)


def _width_roots(flow: Flow, heads: list[list[int]]) -> Callable[[str], str]:
    """Width keys that must stay equal (the ranges one set's units span) joined: key -> the key naming its class."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.get(key, key) != key:
            key = parent[key]
        return key

    for units in heads:
        keys = {_width_key(flow.range_of(u)) for u in units}
        first = root(min(keys))
        for key in keys:
            parent[root(key)] = first
    return root


def _successors(flow: Flow, classes: dict[int, list[int]], positions: dict[int, frozenset[Position]]
                ) -> dict[int, int]:
    """Each class -> the class of the next units of the same ranges, when it sits one slice further along every
    tensor (so that the two chain into one set of consecutive units)."""
    by_positions = {p: root for root, p in positions.items()}
    successor: dict[int, int] = {}
    for root, members in classes.items():
        nxt = by_positions.get(_shifted(positions[root]))
        if nxt is not None and sorted(u + 1 for u in members) == sorted(classes[nxt]) and all(
                flow.range_of(u) == flow.range_of(u + 1) for u in members):
            successor[root] = nxt
    return successor


def _width_key(r: UnitRange, kind: str | None = None) -> str:
    """All ranges of one kind of one PyTorch module share one width (hidden_size, proj_size)."""
    return f"{r.module or '<root>'}#{kind or r.kind}"


def _slice_name(r: UnitRange, start: int, size: int) -> str:
    return r.name if (start, size) == (0, r.size) else f"{r.name}[{start}:{start + size}]"


def _check_uniform(flow: Flow, sets: list[GroupSet], unit_sets: dict[int, tuple[str, int]]) -> None:
    """Every range of one module must be cut into the same number of sets, or widths could not stay equal."""
    per_module: dict[str, set[int]] = {}
    for r in flow.ranges:
        count = len({unit_sets[u][0] for u in range(r.first, r.first + r.size)})
        per_module.setdefault(_width_key(r), set()).add(count)
    for key, counts in per_module.items():
        if len(counts) > 1:
            raise TraceError(f"The layers of `{key.split('#')[0]}` are coupled to other layers unevenly, so they "
                             "could not keep one hidden size after shrinking.", HINT)


def discover(model: nn.Module, example_inputs: Any, features: bool = True) -> Plan:
    """Every ISS group of every recurrent layer of ``model``, with the weights that read it; with ``features``, also
    every other width whose units can go exactly (embedding dimensions, MLP hidden units).

    Runs ``model(*example_inputs)`` (eval mode, no gradients) and follows each unit's output: once for the recurrent
    layers, whose refusal is the model's, then once per embedding, Linear and Conv1d tried as a width of its own. A
    width is kept when its features reach nothing but weights through exact operations; one whose features reach the
    model's outputs (output classes, a vocabulary), or meet an operation that mixes them (LayerNorm, softmax), is
    left whole, not refused."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    flow = follow(model, inputs)
    if not flow.ranges:
        raise TraceError("The model called no nn.LSTM, nn.GRU or nn.RNN on the example inputs, so it has no ISS "
                         "groups to find.", "Pass inputs that run its recurrent layers.")
    plan, accepted, refused = build_plan(flow), (), {}
    for candidate in feature_candidates(model) if features else []:
        try:
            plan, accepted = _with_widths(model, inputs, plan, accepted, (candidate,)), (*accepted, candidate)
        except TraceError as err:
            refused[candidate] = err.message  # its features meet something ISS cannot follow: the width stays whole...
    for pair in itertools.combinations(refused, 2):  # ...unless another's make it exact: attention's queries and keys
        if not set(pair) & set(accepted):
            try:
                plan, accepted = _with_widths(model, inputs, plan, accepted, pair), (*accepted, *pair)
            except TraceError:
                continue
    plan.left_whole = {name: why for name, why in refused.items() if name not in accepted}
    return plan


def _with_widths(model: nn.Module, inputs: tuple, before: Plan, accepted: tuple[str, ...],
                 tried: tuple[str, ...]) -> Plan:
    """The plan with the ``tried`` modules' output widths as sets beside the ``accepted`` ones; TraceError where
    their features reach the outputs, meet an operation ISS cannot follow, never appear — or where removing half of
    their units fails the float64 check on the example inputs (the size is used elsewhere in the forward, a reshape
    by a literal): an optional width is offered only when it can really go, so it never costs the model the widths
    that can."""
    flow = follow(model, inputs, (*accepted, *tried))
    found = {r.module for r in flow.ranges}
    if not set(tried) <= found:
        raise TraceError("its features never reached a weight on the example inputs", HINT)
    if any(_reaches_outputs(flow, module) for module in tried):
        raise TraceError("its features reach the model's outputs (output classes, a vocabulary), which are never "
                         "units", HINT)
    plan = build_plan(flow)
    known = {gs.name for gs in before.group_sets}
    _check_removable(model, inputs, plan, [gs.name for gs in plan.group_sets if gs.name not in known])
    return plan


def _check_removable(model: nn.Module, inputs: tuple, plan: Plan, new_sets: list[str]) -> None:
    """Shrink the ``new_sets`` to every other unit (the rest whole) and run the exactness check; a failure is a
    TraceError naming why, so the width is left whole."""
    from ..errors import ShrinkError
    from .resize import shrink_module_to  # it builds the architecture, which is made of this module's plans

    kept = {gs.name: torch.arange(0, gs.size, 2) if gs.name in new_sets else torch.arange(gs.size)
            for gs in plan.group_sets}
    try:
        shrink_module_to(model, inputs, plan, kept)
    except ShrinkError as err:
        raise TraceError(f"shrinking it is not exact ({' '.join(err.message.split())[:160]})", HINT) from None


def _reaches_outputs(flow: Flow, module: str) -> bool:
    """Whether any output position of the model carries a feature of ``module`` (an output class is never a unit)."""
    ids = {u for r in flow.ranges if r.module == module for u in range(r.first, r.first + r.size)}
    return any(labels is not None and bool(torch.isin(labels, torch.tensor(sorted(ids))).any())
               for labels in flow.output_labels or [])
