"""``iss.reconstruct``: before chosen units are zeroed, the kept units of each set take over what the removed ones
carried (:mod:`isscompress.core.reconstruction`), fitted on the units' values recorded from the model on the
stage's own first batches — no labels, no gradients, seconds.

A set's units are recorded where a module reads them as its input features: an ``nn.Linear`` (a decoder, a head)
or a single-layer recurrent module's input weights (the next layer of a stack). A set no such module reads (the
lower layer of one multi-layer ``nn.LSTM``, whose readers are inside it) is left as it is and named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..core.groups import GroupSet, Member
from ..core.reconstruction import column_readers, fit_removed, fold_into_readers
from .removal import first_batches, side_pass

if TYPE_CHECKING:
    from .loop import Loop

MAX_SAMPLES = 50_000  # rows of unit values kept per set (positions x batch), plenty for a fit of a few hundred units


def _recording_point(model: nn.Module, group_set: GroupSet) -> tuple[nn.Module, int] | None:
    """A module whose input features hold the set's units, and the column of unit 0 there."""
    modules = dict(model.named_modules())
    for member in group_set.members:
        path, _, name = member.key.rpartition(".")
        module = modules.get(path)
        if member.axis != 1 or module is None:
            continue
        if isinstance(module, nn.Linear) and name == "weight":
            return module, member.starts[0]
        if isinstance(module, nn.RNNBase) and module.num_layers == 1 and name == "weight_ih_l0":
            return module, member.starts[0]
    return None


def _record(loop: "Loop", sets: tuple[GroupSet, ...], batches: int) -> tuple[dict[str, Tensor], list[str]]:
    """Each recordable set's unit values ``[samples, units]`` on the stage's first batches, in eval mode."""
    values: dict[str, list[Tensor]] = {}
    handles, unrecorded = [], []
    for group_set in sets:
        point = _recording_point(loop.inner, group_set)
        if point is None:
            unrecorded.append(group_set.name)
            continue
        module, start = point

        def grab(_module: nn.Module, args: tuple, name: str = group_set.name, start: int = start,
                 size: int = group_set.size) -> None:
            features = args[0].data if isinstance(args[0], nn.utils.rnn.PackedSequence) else args[0]
            rows = features.detach().reshape(-1, features.shape[-1])[:, start:start + size]
            values.setdefault(name, []).append(rows.double().cpu())

        handles.append(module.register_forward_pre_hook(grab))
    training = loop.inner.training
    try:
        with side_pass(loop), torch.no_grad():
            loop.inner.eval()
            for batch in first_batches(loop, batches, "iss.reconstruct"):
                loop.task.loss(loop, batch)
    finally:
        loop.inner.train(training)
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts)[:MAX_SAMPLES] for name, parts in values.items()}, unrecorded


def reconstruct(loop: "Loop", sets: tuple[GroupSet, ...], dead: dict[str, Tensor], batches: int) -> list[str]:
    """Fold each set's units that ``dead`` removes into the readers of its kept units; the names of the sets that
    could not be recorded (left as they were)."""
    values, unrecorded = _record(loop, [gs for gs in sets if bool(dead[gs.name].any())], batches)
    producers = {f"{path}.weight" for path, module in loop.inner.named_modules() if isinstance(module, nn.Embedding)}
    for group_set in sets:
        if group_set.name not in values:
            continue
        removed = dead[group_set.name].nonzero().squeeze(1)
        kept = (~dead[group_set.name]).nonzero().squeeze(1)
        readers: dict[Member, str | None] = column_readers(group_set, loop.params, producers)
        a, c = fit_removed(values[group_set.name], kept, removed)
        fold_into_readers(loop.params, readers, kept, removed, a, c)
    if loop.dist.world_size > 1:  # each process recorded its own batches: all continue from the main one's weights
        with torch.no_grad():
            for value in loop.params.values():
                torch.distributed.broadcast(value.data, src=0)
    return unrecorded
