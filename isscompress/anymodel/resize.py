"""Physically smaller copies of a user's module: resize its layers to a shrunk state dict, and prove it.

``shrink_module`` removes the dropped units' positions from the state dict with the language-model
path's own surgery, then rebuilds every layer whose tensors changed shape (``nn.LSTM``/``GRU``/``RNN``,
``nn.Linear``, ``nn.Conv1d``: new modules of the same class with the new sizes; any other module: its
parameters replaced), and checks the result against the masked original in float64 before returning it.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from ..core.groups import all_unit_norms
from ..core.surgery import mask_state_dict, shrink_state_dict
from ..core.thresholding import select_kept
from ..errors import ShrinkError
from .labels import ZERO
from .plan import Plan, check_plan, discover


def _rebuilt(module: nn.Module, state: Mapping[str, Tensor]) -> nn.Module | None:
    """A new module of ``module``'s class sized for ``state`` (its own keys), or None to patch in place."""
    like = next(iter(module.parameters(recurse=False)), None)
    factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
    if isinstance(module, nn.RNNBase):
        proj = state["weight_hr_l0"].shape[0] if "weight_hr_l0" in state else 0
        hidden = state["weight_hr_l0"].shape[1] if proj else state["weight_hh_l0"].shape[1]
        kwargs = dict(input_size=state["weight_ih_l0"].shape[1], hidden_size=hidden, num_layers=module.num_layers,
                      bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                      bidirectional=module.bidirectional, **factory)
        if isinstance(module, nn.LSTM):
            kwargs["proj_size"] = proj
        if type(module) is nn.RNN:
            kwargs["nonlinearity"] = module.nonlinearity
        return type(module)(**kwargs)
    if isinstance(module, nn.RNNCellBase):  # a cell stepped by the model's own loop
        kwargs = dict(input_size=state["weight_ih"].shape[1], hidden_size=state["weight_hh"].shape[1],
                      bias=module.bias, **factory)
        if type(module) is nn.RNNCell:
            kwargs["nonlinearity"] = module.nonlinearity
        return type(module)(**kwargs)
    if type(module) is nn.Embedding:  # its dimensions are a tied decoder's columns
        rows, dim = state["weight"].shape
        return nn.Embedding(rows, dim, padding_idx=module.padding_idx, max_norm=module.max_norm,
                            norm_type=module.norm_type, scale_grad_by_freq=module.scale_grad_by_freq,
                            sparse=module.sparse, **factory)
    if type(module) is nn.Linear:
        out_features, in_features = state["weight"].shape
        return nn.Linear(in_features, out_features, bias="bias" in state, **factory)
    if type(module) is nn.Conv1d:
        out_channels, in_channels, _ = state["weight"].shape
        return nn.Conv1d(in_channels, out_channels, module.kernel_size, module.stride, module.padding,
                         module.dilation, module.groups, "bias" in state, module.padding_mode, **factory)
    return None


def resize_to(model: nn.Module, state: Mapping[str, Tensor], stored_widths: bool = False) -> nn.Module:
    """A copy of ``model`` whose layers have the shapes of ``state``, with ``state`` loaded.

    This is also how a user's code loads a shrunk checkpoint: build the original model, then
    ``resize_to(model, load_file("small.safetensors"))``. ``stored_widths``: also give attributes such as
    ``self.hidden_size`` on the modules around a resized layer its new width (for a forward that builds its states
    from them); ``shrink_module`` tries without, then with, and keeps what its check proves exact."""
    resized = copy.deepcopy(model)
    current = resized.state_dict()
    changed = {key for key, value in state.items() if key in current and current[key].shape != value.shape}
    owners = {key.rpartition(".")[0] for key in changed}
    for path in sorted(owners, key=len, reverse=True):
        module = resized.get_submodule(path) if path else resized
        prefix = f"{path}." if path else ""
        own = {key[len(prefix):]: value for key, value in state.items()
               if key.startswith(prefix) and "." not in key[len(prefix):]}
        new = _rebuilt(module, own)
        if new is None:
            if any(isinstance(module, kind) for kind in (nn.Embedding, nn.LayerNorm, nn.modules.batchnorm._NormBase,
                                                         nn.MultiheadAttention, nn.Bilinear)):
                raise ShrinkError(f"Module `{path}` ({type(module).__name__}) would need new sizes, which isscompress "
                                  "cannot set for this class.", "Report it with the model's code.")
            for name, value in own.items():
                if isinstance(getattr(module, name, None), nn.Parameter):
                    setattr(module, name, nn.Parameter(value.clone(), requires_grad=getattr(module, name).requires_grad))
            continue
        new.train(module.training)
        if stored_widths and isinstance(module, (nn.RNNBase, nn.RNNCellBase)) and new.hidden_size != module.hidden_size:
            _stored_widths(resized, path, module.hidden_size, new.hidden_size)
        if path:
            parent_path, _, child = path.rpartition(".")
            setattr(resized.get_submodule(parent_path) if parent_path else resized, child, new)
        else:
            resized = new
    _tie_again(model, resized)
    try:
        resized.load_state_dict(state)
    except RuntimeError as err:
        raise ShrinkError(f"The resized model does not take the shrunk tensors: {err}".strip(),
                          "Report it with the model's code.") from err
    return resized


# Attribute names that say they hold a recurrent layer's width, on the modules around it
WIDTH_ATTRIBUTES = frozenset({"hidden_size", "hidden_dim", "hid_dim", "nhid", "n_hidden", "num_hidden", "rnn_size",
                              "rnn_hidden_size", "hidden_units"})


def _stored_widths(resized: nn.Module, path: str, old: int, new: int) -> None:
    """Code often builds states from a width stored beside the layer (``self.hidden_size``, pytorch/examples'
    ``self.nhid``): on the modules that contain the resized layer, such an attribute holding its old width gets the
    new one. The float64 check then proves whether that was all the code needed."""
    parts = path.split(".") if path else []
    for depth in range(len(parts)):
        holder = resized.get_submodule(".".join(parts[:depth]))
        for name in WIDTH_ATTRIBUTES & holder.__dict__.keys():
            if type(holder.__dict__[name]) is int and holder.__dict__[name] == old:
                holder.__dict__[name] = new


def _tie_again(model: nn.Module, resized: nn.Module) -> None:
    """Rebuilt modules hold parameters of their own: every name that shared one parameter in ``model`` (a decoder
    tied to its embedding) shares the first name's parameter again."""
    shared: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(parameter), []).append(name)
    for names in (names for names in shared.values() if len(names) > 1):
        first = resized.get_parameter(names[0])
        for alias in names[1:]:
            path, _, attribute = alias.rpartition(".")
            setattr(resized.get_submodule(path) if path else resized, attribute, first)


def _double(value: Any) -> Any:
    return tree_map(lambda v: v.double() if isinstance(v, Tensor) and v.is_floating_point() else v, value)


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


def _kept_mask(labels: Tensor, plan: Plan, kept: Mapping[str, Tensor]) -> Tensor:
    keep = torch.ones(labels.shape, dtype=torch.bool)
    kept_sets = {name: set(indices.tolist()) for name, indices in kept.items()}
    for unit in labels.unique().tolist():
        if unit >= 0 and unit in plan.unit_sets:
            name, index = plan.unit_sets[unit]
            if index not in kept_sets[name]:
                keep &= labels != unit
    return keep


DETERMINISM_SEEDS = (0, 1, 2)  # a coin-flip branch takes both ways within these three draws (0.50, 0.76, 0.61)


def _runs_alike(model: nn.Module, inputs: tuple) -> list:
    """The model's flattened outputs, after checking that runs under different random seeds agree exactly: a
    check on one run vouches for nothing when forward is random (a random branch, noise, sampling)."""
    runs = []
    for seed in DETERMINISM_SEEDS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            runs.append(tree_flatten(model(*inputs))[0])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            a, b = (a.data, b.data) if isinstance(a, PackedSequence) else (a, b)
            if isinstance(a, Tensor) and (a.shape != b.shape or not torch.equal(a, b)):
                gap = float((a - b).abs().max()) if a.shape == b.shape and a.is_floating_point() else float("inf")
                raise ShrinkError(f"The model's forward gives different outputs on runs of the same inputs in eval "
                                  f"mode (largest difference {gap:.3g}): it is random, so no check of the shrunk model "
                                  "can vouch for it.", "Make forward deterministic in eval mode (no torch.rand, random "
                                  "branches or sampling), then shrink again.")
    return runs[0]


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[tuple[str, str]]]:
    """The modules a forward is inside, innermost last (after an exception: where it was raised)."""
    names = {id(m): name for name, m in model.named_modules()}
    stack: list[tuple[str, str]] = []

    def enter(module: nn.Module, args: Any) -> None:
        if id(module) in names and names[id(module)]:
            stack.append((names[id(module)], type(module).__name__))

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in names and names[id(module)] and stack:
            stack.pop()

    handles = [nn.modules.module.register_module_forward_pre_hook(enter),
               nn.modules.module.register_module_forward_hook(leave)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _float64_default() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def with_aliases(state: dict[str, Tensor], plan: Plan) -> dict[str, Tensor]:
    """``state`` with every other name of a shared weight holding its member's tensor (the surgery cuts members)."""
    return {**state, **{alias: state[name] for alias, name in plan.aliases.items() if name in state}}


def inputs_for(plan: Plan, inputs: tuple, kept: Mapping[str, Tensor]) -> tuple[tuple, tuple]:
    """(the masked model's inputs, the shrunk model's inputs). A state the caller passes in (``plan.input_labels``)
    holds the layer's own units: zeros (``init_hidden``), or the state the masked model itself carried from its
    last call, which is zero at every removed unit; the shrunk model gets it cut to the kept units. A state that is
    not zero at a removed unit is foreign — dropping those values would change what the model computes — and is
    refused."""
    if not plan.input_labels:
        return inputs, inputs
    leaves, spec = tree_flatten(inputs)
    masked, small = list(leaves), list(leaves)
    for index, labels in plan.input_labels.items():
        value = leaves[index]
        keep = _kept_mask(labels, plan, kept).to(value.device)
        counts = keep.reshape(-1, keep.shape[-1]).sum(1)
        if not bool((counts == counts[0]).all()):
            raise ShrinkError(f"Input {index}, a state passed to a recurrent layer, would keep different numbers of "
                              "units in its rows.", "Report it with the model's code.")
        if bool((value[~keep] != 0).any()):
            raise ShrinkError(f"Input {index} is the initial state of a recurrent layer and holds non-zero values for "
                              "units being removed: it is not zeros nor a state this model carried after ISS (which is "
                              "zero there), so removing those units would change what the model computes.",
                              "Pass zeros (init_hidden), or the state the fine-tuned model itself returned.")
        small[index] = value[keep].reshape(*value.shape[:-1], int(counts[0]))
    return tree_unflatten(masked, spec), tree_unflatten(small, spec)


def verify(original: nn.Module, masked_state: Mapping[str, Tensor], shrunk: nn.Module, example_inputs: tuple,
           plan: Plan, kept: Mapping[str, Tensor]) -> float:
    """Largest difference between the masked original and the shrunk module on the inputs, in float64.

    Outputs that carry hidden features are compared on the positions of the kept units."""
    masked = copy.deepcopy(original).double().eval()
    masked.load_state_dict({k: _double(v) for k, v in masked_state.items()})
    small = copy.deepcopy(shrunk).double().eval()
    masked_inputs, small_inputs = inputs_for(plan, _double(example_inputs), kept)
    with torch.no_grad(), _float64_default():  # tensors forward makes (torch.zeros(...)) are float64 too
        expected = _runs_alike(masked, masked_inputs)
        with _module_stack(small) as stack:
            try:
                actual = tree_flatten(small(*small_inputs))[0]
            except Exception as err:
                where = f" in module `{stack[-1][0]}` ({stack[-1][1]})" if stack else ""
                raise ShrinkError(f"The shrunk model fails on the example inputs{where} ({type(err).__name__}: "
                                  f"{' '.join(str(err).split())[:200]}); its forward probably builds a tensor from a "
                                  "size written outside its layers (a literal, or an attribute isscompress could not "
                                  "resize).", "Read sizes from the layers (lstm.hidden_size, tensor.shape) in forward, "
                                  "then shrink again.") from err
    labels = plan.output_labels or [None] * len(expected)
    worst = 0.0
    for e, a, lab in zip(expected, actual, labels):
        if isinstance(e, PackedSequence):
            e, a = e.data, a.data
        if not isinstance(e, Tensor):
            continue
        if lab is not None and lab.shape == e.shape:
            e = e[_kept_mask(_padding_as_units(lab), plan, kept).to(e.device)]
            a = a.flatten()
        if e.shape != a.shape:
            raise ShrinkError(f"The shrunk model's output has shape {tuple(a.shape)} where {tuple(e.shape)} was "
                              "expected.", "Its forward probably uses sizes stored outside its layers.")
        if e.is_floating_point():
            worst = max(worst, float((e - a).abs().max()) if e.numel() else 0.0)
        elif not torch.equal(e, a):
            worst = float("inf")
    return worst


def shrink_module(model: nn.Module, example_inputs: Any, threshold: float = 1e-4, plan: Plan | None = None,
                  tolerance: float = 1e-8) -> nn.Module:
    """A new, physically smaller module: the units whose ISS group norm is at most ``threshold`` removed.

    ``model`` is untouched. The result is checked against ``model`` with those units zeroed, in float64,
    on ``example_inputs``; a difference above ``tolerance`` times the largest weight magnitude (at least 1)
    raises ShrinkError."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    plan = plan if plan is not None else discover(model, inputs)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    check_plan(plan, state, "the plan")
    return shrink_module_to(model, inputs, plan, select_kept(all_unit_norms(state, plan.group_sets),
                                                             plan.group_sets, threshold), tolerance)


def shrink_module_to(model: nn.Module, inputs: tuple, plan: Plan, kept: Mapping[str, Tensor],
                     tolerance: float = 1e-8, more_inputs: tuple[tuple, ...] = ()) -> nn.Module:
    """:func:`shrink_module` keeping exactly ``kept[set]`` units (sorted indices), with the same float64 check
    (also on ``more_inputs``, other batches of the same kind; a batch of another shape reaches other code paths)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    small_state = with_aliases(shrink_state_dict(state, plan.group_sets, kept), plan)
    masked_state = with_aliases(mask_state_dict(state, plan.group_sets, kept), plan)
    scale = max(1.0, max((float(p.abs().max()) for p in state.values() if p.is_floating_point() and p.numel()),
                         default=1.0))
    for stored_widths in (False, True):  # as written; then with self.hidden_size-like attributes resized too
        shrunk = resize_to(model, small_state, stored_widths)
        try:
            worst = max(verify(model, masked_state, shrunk, batch, plan, kept) for batch in (inputs, *more_inputs))
        except ShrinkError:
            if stored_widths:
                raise
            continue
        if worst <= tolerance * scale or stored_widths:
            break
    if not worst <= tolerance * scale:
        raise ShrinkError(f"The shrunk model differs from the masked original by {worst:.3g} on the example inputs "
                          "(float64): the plan does not describe every reader of the removed units.",
                          "If the groups came from a YAML file, check its members; otherwise report it with the "
                          "model's code.")
    return shrunk

