"""Fine-tune a user's model with ISS and no labels: match the original model's outputs on unlabelled inputs.

For a model whose training code or labels are not at hand, the original is its own teacher: every
floating-point output of the student is pulled towards the frozen original's (KL of the softened
distributions over the last axis for logits, or the mean squared error), while group Lasso removes units.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from ..training.objectives import distillation_divergence
from .lasso import GroupLasso
from .plan import Plan, discover


def _floats(outputs: Any) -> list[Tensor]:
    return [t for t in tree_flatten(outputs)[0] if isinstance(t, Tensor) and t.is_floating_point()]


def _to(value: Any, device: torch.device) -> Any:
    return tree_map(lambda v: v.to(device) if isinstance(v, Tensor) else v, value)


def output_gap(student: nn.Module, teacher: nn.Module, inputs: tuple, temperature: float = 1.0,
               kind: str = "kl") -> Tensor:
    """The distillation loss of one batch: summed over the model's floating outputs."""
    with torch.no_grad():
        targets = _floats(teacher(*inputs))
    outputs = _floats(student(*inputs))
    return sum(distillation_divergence(o, t, temperature, kind) for o, t in zip(outputs, targets))


def finetune_label_free(model: nn.Module, batches: Iterable[tuple] | Callable[[], Iterable[tuple]],
                        plan: Plan | None = None, *, example_inputs: tuple | None = None, lam: float = 1e-3,
                        method: str = "proximal", targets: dict[str, int] | None = None, reweight: float = 0.0,
                        epochs: int = 1, lr: float = 1e-3, optimizer: str = "adam", clip: float | None = 5.0,
                        temperature: float = 1.0, loss: str = "kl", device: str | torch.device = "cpu",
                        on_epoch: Callable[[int, float, GroupLasso], None] | None = None) -> GroupLasso:
    """Train ``model`` in place towards a frozen copy of itself while group Lasso removes units.

    ``batches``: input tuples for ``model(*inputs)`` (no labels), or a function giving a fresh iterable
    each epoch. Returns the regulariser (its ``norms()`` and ``widths()`` say what a shrink will keep)."""
    device = torch.device(device)
    model.to(device)
    if plan is None:
        if example_inputs is None:
            raise ValueError("finetune_label_free needs a plan or example_inputs to discover one")
        plan = discover(model, _to(example_inputs, device))
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    lasso = GroupLasso(model, plan, lam=lam, method=method, targets=targets, reweight=reweight)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for inputs in (batches() if callable(batches) else batches):
            inputs = _to(inputs if isinstance(inputs, tuple) else (inputs,), device)
            gap = output_gap(model, teacher, inputs, temperature, loss)
            opt.zero_grad()
            gap.backward()
            lasso.add_gradient()
            if clip:
                nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            lasso.step(lr)
            total, count = total + float(gap.detach()), count + 1
        if on_epoch is not None:
            on_epoch(epoch + 1, total / max(count, 1), lasso)
    model.eval()
    return lasso
