"""Fine-tune a user's model with ISS and no labels: match the original model's outputs on unlabelled inputs.

For a model whose training code or labels are not at hand, the original is its own teacher: every
floating-point output of the student is pulled towards the frozen original's (KL of the softened
distributions over the last axis for logits, or the mean squared error), while group Lasso removes units.
It runs on the training loop every model shares (:func:`isscompress.training.loop.fit_task` with a
:class:`~isscompress.training.tasks.LabelFreeTask`), so the NaN guard, devices, DDP and hooks are the same.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..anymodel.plan import Plan, discover
from ..recipe import Schedule
from .distributed import Distributed
from .hooks import Event, Report
from .lasso import GroupLasso
from .loop import fit_task
from .tasks import Batches, LabelFreeTask, output_gap, to_device

__all__ = ["finetune_label_free", "output_gap"]


def finetune_label_free(model: nn.Module, batches: Batches, plan: Plan | None = None, *,
                        example_inputs: tuple | None = None, lam: float = 1e-3, method: str = "proximal",
                        targets: dict[str, int] | None = None, reweight: float = 0.0, epochs: int = 1,
                        lr: float = 1e-3, optimizer: str = "adam", clip: float | None = 5.0, temperature: float = 1.0,
                        loss: str = "kl", device: str | torch.device = "cpu",
                        on_epoch: Callable[[int, float, GroupLasso], None] | None = None) -> GroupLasso:
    """Train ``model`` in place towards a frozen copy of itself while group Lasso removes units.

    ``batches``: input tuples for ``model(*inputs)`` (no labels), or a function giving a fresh iterable
    each epoch. Returns the regulariser (its ``norms()`` and ``widths()`` say what a shrink will keep)."""
    dist = Distributed.single(str(device))
    model.to(dist.device)
    if plan is None:
        if example_inputs is None:
            raise ValueError("finetune_label_free needs a plan or example_inputs to discover one")
        plan = discover(model, to_device(example_inputs, dist.device))
    teacher = copy.deepcopy(model)
    lasso = GroupLasso(model, plan, lam=lam, method=method, targets=targets, reweight=reweight)
    schedule = Schedule(epochs=epochs, lr=lr, optimizer=optimizer, clip=clip, log_every=10**9)

    def epoch_done(event: Event) -> None:
        if on_epoch is not None and event["event"] == "epoch":
            on_epoch(event["epoch"], event["train_loss"], lasso)

    fit_task(model, LabelFreeTask(batches, teacher, temperature, loss), schedule, hooks=[lasso.hook, Report(epoch_done)],
             dist=dist)
    model.eval()
    return lasso
