"""Physically smaller copies of a user's module: resize its layers to a shrunk state dict, and prove it.

``shrink_module`` removes the dropped units' positions from the state dict with the language-model
path's own surgery, then rebuilds every layer whose tensors changed shape (``nn.LSTM``/``GRU``/``RNN``,
``nn.Linear``, ``nn.Conv1d``: new modules of the same class with the new sizes; any other module: its
parameters replaced), and checks the result against the masked original in float64 before returning it.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..layers.cells import cell_of_module
from ..core.groups import all_unit_norms
from ..core.surgery import shrink_state_dict
from ..core.thresholding import select_kept
from ..errors import ShrinkError
from .plan import Plan, check_plan, discover
from .sharing import shared_names, with_shared


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
    own = cell_of_module(module)
    if own is not None and own.module_class is not None:  # the cell table's own module (an RHN layer): it makes one
        rows, width = state["weight_ih_l0"].shape[0] // own.gates, state["weight_ih_l0"].shape[1]
        shape = SimpleNamespace(input_size=width, hidden_size=rows, proj_size=0, depth=getattr(module, "depth", 1))
        new = own.make(shape, any(key.startswith("bias") for key in state),
                       getattr(module, "bidirectional", False)).to(**factory)
        sized = {"input_size", "hidden_size"}
        new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in sized and not k.startswith("_")})
        return new
    if type(module) is nn.Embedding:  # its dimensions are a tied decoder's columns
        rows, dim = state["weight"].shape
        return nn.Embedding(rows, dim, padding_idx=module.padding_idx, max_norm=module.max_norm,
                            norm_type=module.norm_type, scale_grad_by_freq=module.scale_grad_by_freq,
                            sparse=module.sparse, **factory)
    if type(module) is nn.BatchNorm1d:  # a per-feature scale and shift between layers: its features are units
        return nn.BatchNorm1d(state["weight"].shape[0], module.eps, module.momentum, module.affine,
                              module.track_running_stats, **factory)
    if type(module) is nn.Linear:
        out_features, in_features = state["weight"].shape
        return nn.Linear(in_features, out_features, bias="bias" in state, **factory)
    if type(module) is nn.Conv1d:
        out_channels, in_channels, _ = state["weight"].shape
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        groups = out_channels if depthwise else module.groups  # one kernel per channel: as many groups as channels
        return nn.Conv1d(in_channels * groups, out_channels, module.kernel_size, module.stride, module.padding,
                         module.dilation, groups, "bias" in state, module.padding_mode, **factory)
    return None


def resize_to(model: nn.Module, state: Mapping[str, Tensor], stored_widths: bool = False) -> nn.Module:
    """A copy of ``model`` whose layers have the shapes of ``state``, with ``state`` loaded.

    This is also how a user's code loads a shrunk checkpoint: build the original model, then
    ``resize_to(model, load_file("small.safetensors"))``. ``stored_widths``: also give attributes such as
    ``self.hidden_size`` on the modules around a resized layer its new width (for a forward that builds its states
    from them); ``shrink_module`` tries without, then with, and keeps what its check proves exact. A tensor the
    model shares under several names (a tied decoder) may be in ``state`` under its first name only, as shrink
    writes it (and safetensors' ``save_model``): the model's own sharing restores the others."""
    state = with_shared(state, shared_names(model))
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
        if stored_widths and cell_of_module(module) is not None and new.hidden_size != module.hidden_size:
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
    for alias, name in shared_names(model).items():
        path, _, attribute = alias.rpartition(".")
        holder = resized.get_submodule(path) if path else resized
        if isinstance(getattr(holder, attribute, None), nn.Parameter):
            setattr(holder, attribute, resized.get_parameter(name))


def kept_mask(labels: Tensor, plan: Plan, kept: Mapping[str, Tensor]) -> Tensor:
    keep = torch.ones(labels.shape, dtype=torch.bool)
    kept_sets = {name: set(indices.tolist()) for name, indices in kept.items()}
    for unit in labels.unique().tolist():
        if unit >= 0 and unit in plan.unit_sets:
            name, index = plan.unit_sets[unit]
            if index not in kept_sets[name]:
                keep &= labels != unit
    return keep


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
        keep = kept_mask(labels, plan, kept).to(value.device)
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


def shrink_module(model: nn.Module, example_inputs: Any, threshold: float = 1e-4, plan: Plan | None = None
                  ) -> nn.Module:
    """A new, physically smaller module: the units whose ISS group norm is at most ``threshold`` removed.

    ``model`` is untouched. The result is checked against ``model`` with those units zeroed, in float64, on
    ``example_inputs`` (:func:`isscompress.core.exactness.check_shrunk`, the check of every shrink); a difference
    beyond float64's rounding raises ShrinkError."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    plan = plan if plan is not None else discover(model, inputs)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    check_plan(plan, state, "the plan")
    return shrink_module_to(model, inputs, plan, select_kept(all_unit_norms(state, plan.group_sets),
                                                             plan.group_sets, threshold))


def shrink_module_to(model: nn.Module, inputs: tuple, plan: Plan, kept: Mapping[str, Tensor],
                     more_inputs: tuple[tuple, ...] = ()) -> nn.Module:
    """:func:`shrink_module` keeping exactly ``kept[set]`` units (sorted indices), with the same check (also on
    ``more_inputs``, other batches of the same kind; a batch of another shape reaches other code paths)."""
    from ..architectures.traced import TracedModel  # the architecture is built from this module's functions
    from ..core.exactness import check_shrunk

    spec = TracedModel.of(model, plan, inputs, more_inputs)
    state = spec.canonical({k: v.detach() for k, v in model.state_dict().items()})
    small_state = shrink_state_dict(state, plan.group_sets, kept)
    small = spec.with_kept(kept, replan=False)  # a module is returned: the smaller model's plan is not needed
    check_shrunk(spec, state, small, small_state, kept)
    return small.build(small_state)
