"""ISS group Lasso inside anyone's training loop: the recipe path's regulariser with a two-call interface.

    reg = GroupLasso(model, plan, lam=1e-3, method="proximal")
    ... loss.backward(); opt.step(); opt.zero_grad(); reg.step(lr)

It wraps :class:`~isscompress.training.hooks.GroupLassoHook`, so lambdas per set, target widths,
reweighting, frozen dead groups and the cost per step are the recipe path's own.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping

import torch
from torch import Tensor, nn

from pydantic import ValidationError

from ..core.groups import chosen_sets
from ..core.regularizer import group_norms, penalty
from ..core.thresholding import kept_widths
from ..recipe import IssSection
from ..anymodel.plan import Plan
from .iss_hook import GroupLassoHook


class GroupLasso:
    """Group Lasso on a plan's group sets of ``model``'s parameters.

    ``method="proximal"``: group soft-thresholding after the optimizer step (exact zeros).
    ``method="subgradient"`` (the paper's): call :meth:`add_gradient` after ``backward()`` so the
    penalty's gradient goes through your optimizer (and clipping); otherwise :meth:`step` applies it as a
    plain gradient step. ``method="one-shot"``: no penalty; the weakest units by their norms (this object sees no
    loss to rank them by Taylor importance: ``isscompress.finetune`` does) are zeroed here, down to ``targets``, and
    :meth:`step` keeps them at zero while your loop recovers the rest. ``targets``: per set name,
    stop shrinking at this many alive units. ``widths="all"``: also the plan's other widths (embedding dimensions,
    MLP units), not only its recurrent layers.
    """

    def __init__(self, model: nn.Module, plan: Plan, lam: float, method: str = "proximal", *,
                 targets: Mapping[str, int] | None = None, multipliers: Mapping[str, float] | None = None,
                 reweight: float = 0.0, freeze_dead: bool = True, zero_threshold: float = 1e-4,
                 widths: str = "recurrent") -> None:
        if method == "gradual":  # its rounds are spread over a stage's steps, which only the training loop knows
            raise ValueError("GroupLasso: method 'gradual' spreads its removals over a fine-tuning stage; run it "
                             "with isscompress.finetune (iss: {method: gradual, ...}), or use 'one-shot' here")
        names = {gs.name for gs in chosen_sets(plan.group_sets, widths)}
        unknown = sorted((set(targets or {}) | set(multipliers or {})) - names)
        if unknown:
            others = {gs.name for gs in plan.group_sets} - names
            hint = " (pass widths='all' for the widths that are not recurrent layers')" if set(unknown) & others else ""
            raise ValueError(f"GroupLasso: no group set named {', '.join(unknown)}; the plan has "
                             f"{', '.join(sorted(names))}{hint}")
        try:
            self.iss = IssSection(lambda_=lam, method=method, target_widths=dict(targets or {}),
                                  layer_multipliers=dict(multipliers or {}), reweight=reweight,
                                  freeze_dead=freeze_dead, zero_threshold=zero_threshold, widths=widths,
                                  **({"importance": "norm"} if method == "one-shot" else {}))
        except ValidationError as err:  # the recipe's own rules, said in this function's argument names
            names = {"lambda": "lam", "lambda_": "lam", "target_widths": "targets", "layer_multipliers": "multipliers"}
            problems = "; ".join(f"{names.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']} (got {e.get('input')!r})"
                                 for e in err.errors())
            raise ValueError(f"GroupLasso: {problems}") from None
        self.params = dict(model.named_parameters())
        missing = sorted({m.key for gs in plan.group_sets for m in gs.members} - set(self.params))
        if missing:
            raise ValueError(f"GroupLasso: the plan names tensors that are not parameters of the model: {missing[:5]}")
        self.hook = GroupLassoHook(plan.group_sets, self.iss)
        self.hook.start(SimpleNamespace(params=self.params))
        self._gradient_added = False

    def add_gradient(self) -> None:
        """subgradient: add ``lambda * w_g / ||w_g||`` to ``.grad`` (between backward and the optimizer step)."""
        if self.iss.method == "subgradient":
            self.hook.before_clip(None)
            self._gradient_added = True

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """After the optimizer step: the proximal step, or the sub-gradient's zeroing (see the class doc)."""
        if self.iss.method == "subgradient" and not self._gradient_added:
            keys = self.hook.keys
            saved = {k: self.params[k].grad for k in keys}
            for k in keys:
                self.params[k].grad = torch.zeros_like(self.params[k])
            self.hook.before_clip(None)
            for k in keys:
                self.params[k].sub_(lr * self.params[k].grad)
                self.params[k].grad = saved[k]
        self.hook.after_step(SimpleNamespace(state=SimpleNamespace(lr=lr)))
        self._gradient_added = False

    def norms(self) -> dict[str, Tensor]:
        """Every unit's group norm, per set."""
        return {k: v.detach().cpu() for k, v in group_norms(self.params, self.hook.sets).items()}

    def widths(self, threshold: float = 0.0) -> dict[str, int]:
        """Units per set that a shrink at ``threshold`` would keep: norms above it, made legal by the same width
        rules shrink applies (both directions of one module keep one width; a projection stays narrower)."""
        return kept_widths(self.norms(), self.hook.sets, threshold)

    def suggest_lambda(self, lr: float, steps: int) -> float:
        """A starting lambda for ``steps`` proximal steps at ``lr`` (the step size the optimizer's lr is, with Adam
        too): each step shrinks a group's norm by ``lr * lambda`` before the loss pulls back, so 3 x the median
        alive group norm / (lr x steps) lets group Lasso remove units against the loss within the run. Start there,
        then halve or double it; or give targets and let them stop the shrinking."""
        alive = torch.cat([n[n > 0] for n in self.norms().values()])
        return 3 * float(alive.median()) / (lr * steps) if alive.numel() else 0.0

    def penalty(self) -> float:
        """The group-Lasso term ``sum lambda_g ||w_g||`` at the current weights."""
        return penalty(group_norms(self.params, self.hook.sets), self.hook.lambdas)
