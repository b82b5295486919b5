"""The ISS hook: group Lasso (subgradient or proximal, λ steered to a budget), one-shot and gradual removal, and
what is left of a target completed at the end, over the recipe's group sets, at the loop's steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.groups import GroupSet, chosen_sets
from ..core.surgery import mask_state_dict
from ..core.thresholding import targets_per_set, widest_per_key
from ..core.regularizer import (
    Lambdas,
    add_subgradient,
    group_norms,
    lambdas_for,
    penalty,
    proximal_step,
    regularized_keys,
    reweighted,
    zero_dead_groups,
    zero_small_weights,
)
from ..errors import ShrinkError
from ..recipe import IssSection
from .budget import Cost
from .budget_control import (DEFAULT_REACH_BY, STATE_KEY, LambdaSteering, cubic_progress, round_steps,
                             scheduled_goal)
from .removal import accumulated_taylor, one_shot_removal, stage_steps
from .repair import reconstruct

if TYPE_CHECKING:
    from .loop import Loop
from .hooks import Event, Hook


def lambda_scale_warning(norms: dict[str, Tensor], lam: float, lr: float, steps: int, iss: IssSection | None = None
                         ) -> str | None:
    """Whether ``lam`` can do anything in ``steps`` proximal steps at ``lr``: each step shrinks a group's norm by
    ``lr * lam`` (before the loss pulls back), so ``lr * lam * steps`` against the median group norm is the scale
    of lambda. None when it is in a sensible range; else what to try (the loss's gradients fight the shrinkage,
    so a run needs a few times the median norm in all)."""
    alive = torch.cat([n[n > 0] for n in norms.values()]) if norms else torch.zeros(0)
    if not alive.numel():
        return None
    median = float(alive.median())
    travel = lr * lam * steps
    suggested = 3 * median / (lr * steps)
    if travel < 0.5 * median:
        goal = iss is not None and (iss.target is not None or bool(iss.target_widths))
        if goal and iss.reach_by is not None:
            return None  # lambda is steered to the target: a small start is what the steering raises
        tail = (f"or set iss.reach_by (e.g. 0.75) to steer lambda to the target; as it is, what group Lasso leaves "
                f"above the target at the end is {'removed weakest-first' if iss.unmet == 'complete' else 'an error'}"
                if goal else "or give a budget (iss.target) or target widths")
        return (f"iss.lambda {lam:g} can shrink a group's norm by at most {travel:.3g} in this run ({steps} steps at lr "
                f"{lr:g}), against a median group norm of {median:.3g}: it will remove few or no units. Try lambda "
                f"around {suggested:.3g} (3 x median / (lr x steps)), {tail}.")
    if lr * lam > median:
        return (f"iss.lambda {lam:g} shrinks a group's norm by {lr * lam:.3g} in one step at lr {lr:g}, more than the "
                f"median group norm {median:.3g}: most units die in the first steps. Try lambda around "
                f"{suggested:.3g} (3 x median / (lr x steps)).")
    return None


class GroupLassoHook(Hook):
    """ISS group Lasso on the given group sets: the sub-gradient before clipping (as if the penalty were
    in the loss), or a proximal step after the optimizer step; per-set lambdas, reweighting, targets."""

    def __init__(self, sets: tuple[GroupSet, ...], iss: IssSection, alive_threshold: float = 0.0,
                 budget: "tuple[Cost, float] | None" = None) -> None:
        self.sets = chosen_sets(sets, iss.widths)
        self.iss = iss.model_copy(update={"target_widths": targets_per_set(iss.target_widths, self.sets)})
        self.budget = budget  # (cost of alive units per set, its limit): iss.target
        self.alive_threshold = alive_threshold  # a unit whose group norm is at most this counts as removed
        self.lambdas = lambdas_for(self.sets, iss.lambda_, iss.layer_multipliers)
        self.keys = regularized_keys(self.sets)
        self.current: Lambdas | None = None  # the per-group lambdas of the last step
        self.dead: dict[str, Tensor] | None = None  # proximal + freeze_dead: units already at exactly zero
        self.norms: dict[str, Tensor] | None = None  # the norms of the last step, for logging
        self.params: dict[str, Tensor] = {}
        self.step = 0  # steps taken (for the lambda warm-up)
        self.steering: LambdaSteering | None = None  # iss.reach_by: lambda's scale, steered to the budget
        self.rounds: list[int] = []  # method gradual: the steps after which units are removed
        self.deadline = 1.0  # method gradual: the step by which the targets are reached

    def start(self, loop: "Loop") -> None:
        self.params = loop.params
        self.step = getattr(getattr(loop, "state", None), "step", 0)  # a resumed run continues the ramp
        norms = group_norms(self.params, self.sets)
        # Groups already exactly zero count as dead from the start (the same on a fresh and a resumed run).
        self.dead = {name: norm == 0 for name, norm in norms.items()}
        if self.iss.method == "one-shot":
            self.dead = one_shot_removal(norms, self.sets, self.iss, self.alive_threshold, self.budget,
                                         self._scores(loop))
            if self.step == 0:  # a resumed run's removed units are already zero: nothing left to carry over
                self._repair(loop)
            self._zero_dead()
            return
        schedule = getattr(loop, "schedule", None)
        scheduled = self.iss.method == "gradual" or (self.iss.reach_by is not None and self.budget is not None)
        steps = stage_steps(loop, count_batches=scheduled) if schedule is not None else None
        if self.iss.method == "gradual":
            if steps is None:
                raise ShrinkError("iss.method gradual spreads its removals over the stage's steps, and the stage "
                                  "has no batches to count.", "Give training data, or use one-shot.")
            reach_by = self.iss.reach_by or DEFAULT_REACH_BY
            self.rounds, self.deadline = round_steps(steps, reach_by, self.iss.removal_rounds), reach_by * steps
            return
        if self.iss.reach_by is not None and self.budget is not None:
            if steps is None:
                loop.emit({"event": "warning", "text": "iss.reach_by needs the stage's number of steps, and the "
                           "stage has no batches to count: lambda is not steered."})
            else:
                scale = float(loop.state.hooks.get(STATE_KEY, 1.0))
                self.steering = LambdaSteering.for_stage(*self.budget, steps, self.iss.reach_by, scale)
        if steps is not None and self.iss.method == "proximal" and self.step == 0:
            text = lambda_scale_warning(norms, self.iss.lambda_, loop.state.lr, steps, self.iss)
            if text is not None:
                loop.emit({"event": "warning", "text": text})

    def before_clip(self, loop: "Loop") -> None:
        """subgradient: one norm pass, then the sub-gradient into .grad (so clipping sees it)."""
        self.norms = None
        if self.iss.method != "subgradient":
            return
        self.norms = group_norms(self.params, self.sets)
        add_subgradient(self.params, self.sets, self._lambdas(self.norms), self.norms)

    def _lambdas(self, norms: dict[str, Tensor], lr: float | None = None) -> Lambdas:
        """This step's lambdas: reweighted by the norms, and 0 for a set already at its target width.

        With ``lr`` (the proximal step) a set may lose at most its units above target in one step:
        the strongest of the units that would reach zero are spared this step."""
        if self.iss.method in ("one-shot", "gradual"):  # no penalty: the removed units are chosen, not driven
            self.current = {name: 0.0 for name in norms}
            return self.current
        base = self.lambdas
        if self.steering is not None:
            base = {name: lam * self.steering.scale for name, lam in base.items()}
        if self.iss.warmup_steps and self.step < self.iss.warmup_steps:
            ramp = (self.step + 1) / self.iss.warmup_steps
            base = {name: lam * ramp for name, lam in base.items()}
        current = dict(reweighted(base, norms, self.iss.reweight))
        for name, target in self.iss.target_widths.items():
            norm = norms[name]
            alive = self._alive(name, norm)
            spare = int(alive.sum()) - target
            if spare <= 0:
                current[name] = 0.0
                continue
            if lr is None:
                continue
            lam = torch.as_tensor(current[name], dtype=norm.dtype, device=norm.device).expand_as(norm).clone()
            dying = alive & (norm <= lr * lam)
            excess = int(dying.sum()) - spare
            if excess > 0:
                lam[torch.where(dying, norm, -1.0).topk(excess).indices] = 0.0
                current[name] = lam
        current = self._in_step(current, norms)
        if self.budget is not None:
            current = self._within_budget(current, norms, lr)
        self.current = current
        return current

    def _in_step(self, current: dict, norms: dict[str, Tensor]) -> dict:
        """Sets that must keep one width (the layers and directions of one nn.LSTM) shrink in step: a set with
        fewer alive units than the widest of its width key is spared, since a shrink keeps the widest count in all
        of them and its lost units would be kept as zeros — function lost, nothing removed."""
        alive = self._alive_counts(norms)
        widest = widest_per_key(alive, self.sets)
        return {gs.name: 0.0 if alive[gs.name] < widest[gs.width_key] else current[gs.name] for gs in self.sets}

    def _alive(self, name: str, norm: Tensor) -> Tensor:
        alive = norm > self.alive_threshold
        if self.iss.freeze_dead and self.dead is not None:  # the optimizer nudged them; they are zeroed again
            alive &= ~self.dead[name].to(alive.device)
        return alive

    def _alive_counts(self, norms: dict[str, Tensor]) -> dict[str, int]:
        """Units per set that count as alive (above the threshold, and not frozen dead): what a shrink keeps."""
        return {name: int(self._alive(name, norm).sum()) for name, norm in norms.items()}

    def _within_budget(self, current: dict, norms: dict[str, Tensor], lr: float | None) -> dict:
        """Lambda 0 everywhere once the alive units fit the budget; with ``lr`` (the proximal step), the
        weakest units that would die this step die only while the model is still over it."""
        cost, limit = self.budget
        alive = {name: self._alive(name, norm) for name, norm in norms.items()}
        counts = {name: int(mask.sum()) for name, mask in alive.items()}
        if cost(counts) <= limit:
            return {name: 0.0 for name in current}
        if lr is None:
            return current
        lams = {name: torch.as_tensor(current[name], dtype=norm.dtype, device=norm.device).expand_as(norm).clone()
                for name, norm in norms.items()}
        dying = sorted((float(norms[name][i]), name, int(i)) for name in norms
                       for i in (alive[name] & (norms[name] <= lr * lams[name])).nonzero().squeeze(1).tolist())
        for _, name, index in dying:
            if cost(counts) <= limit:
                lams[name][index] = 0.0  # spared: the budget is met without it
            else:
                counts[name] -= 1
        return lams

    def _removal_round(self, loop: "Loop", done: int) -> None:
        """``method: gradual``: remove the weakest units down to where the cubic schedule is after ``done`` steps."""
        norms = group_norms(self.params, self.sets)
        frozen = {name: norm.masked_fill(self.dead[name].to(norm.device), 0.0) for name, norm in norms.items()}
        iss, budget = scheduled_goal(self.iss, {gs.name: gs.size for gs in self.sets}, self.budget,
                                     cubic_progress(done, self.deadline))
        self.dead = one_shot_removal(frozen, self.sets, iss, self.alive_threshold, budget, self._scores(loop))
        self._repair(loop)
        loop.emit({"event": "removal", "step": done, "kept": {name: int((~dead).sum())
                                                              for name, dead in self.dead.items()}})

    def _scores(self, loop: "Loop") -> dict[str, Tensor] | None:
        """What ranks the units to remove: None for their norms, else their Taylor importance on the stage's loss."""
        if self.iss.importance != "taylor" or getattr(loop, "task", None) is None:
            return None
        return accumulated_taylor(loop, self.sets, self.iss.importance_batches)

    def _repair(self, loop: "Loop") -> None:
        """``iss.reconstruct``: the kept units take over what the chosen ones carried, before those are zeroed."""
        if not self.iss.reconstruct or getattr(loop, "task", None) is None:
            return
        unrecorded = reconstruct(loop, self.sets, self.dead, self.iss.reconstruct_batches)
        if unrecorded:
            loop.emit({"event": "warning", "text": f"iss.reconstruct left {', '.join(unrecorded)} as they were: no "
                       "nn.Linear or single-layer recurrent module reads their units as its input (a lower layer of one "
                       "multi-layer nn.LSTM/nn.GRU is read inside it; a last layer tied to the embedding, through it)."})

    def _zero_dead(self) -> None:
        kept = {name: (~dead).nonzero().squeeze(1).cpu() for name, dead in self.dead.items()}
        with torch.no_grad():
            mask_state_dict(self.params, self.sets, kept, in_place=True)

    def after_step(self, loop: "Loop") -> None:
        """Zeros after the optimizer step; keeps the norms to log (one norm pass per step in all)."""
        params, lr = self.params, loop.state.lr
        if self.iss.method in ("one-shot", "gradual"):  # the removed groups stay removed; the rest recovers
            if self.iss.method == "gradual" and self.step + 1 in self.rounds:
                self._removal_round(loop, self.step + 1)
            self._zero_dead()
            self.norms = group_norms(params, self.sets)
        elif self.iss.method == "proximal":
            norms = group_norms(params, self.sets)
            factors = proximal_step(params, self.sets, self._lambdas(norms, lr), lr, norms,
                                    frozen=self.dead if self.iss.freeze_dead else None)
            self.dead = {name: factor == 0 for name, factor in factors.items()}
            self.norms = {name: norms[name] * factors[name] for name in norms}
        else:
            if self.iss.freeze_dead:
                zero_dead_groups(params, self.sets, self.norms)
            if self.iss.zero_threshold > 0:
                zero_small_weights(params, self.keys, self.iss.zero_threshold)
        self.step += 1
        if self.steering is not None and self.norms is not None:
            self.steering.update(self.step, self._alive_counts(self.norms))
            loop.state.hooks[STATE_KEY] = self.steering.scale

    def finish(self, loop: "Loop") -> bool:
        """A target group Lasso left unmet: the weakest remaining units removed (``iss.unmet: complete``, said and
        logged) or the stage refused (``fail``)."""
        if self.iss.method == "one-shot" or (self.budget is None and not self.iss.target_widths):
            return False
        norms = group_norms(self.params, self.sets)
        before = self._alive_counts(norms)
        over_widths = {name: width for name, width in self.iss.target_widths.items() if before[name] > width}
        over_budget = self.budget is not None and self.budget[0](before) > self.budget[1]
        if not over_widths and not over_budget:
            return False
        what = "; ".join([*(f"{name} keeps {before[name]} units, above its target_widths {width}"
                            for name, width in over_widths.items()),
                          *([f"the alive units cost {self.budget[0](before):,.0f}, above iss.target's "
                             f"{self.budget[1]:,.0f}"] if over_budget else [])])
        if self.iss.unmet == "fail":
            raise ShrinkError(f"At the end of the stage group Lasso had not met its target: {what}.",
                              "Raise iss.lambda, set iss.reach_by (e.g. 0.75) to steer lambda to the target, train "
                              "longer, or set iss.unmet: complete to remove the weakest remaining units.")
        frozen = {name: norm.masked_fill(~self._alive(name, norm), 0.0) for name, norm in norms.items()}
        self.dead = one_shot_removal(frozen, self.sets, self.iss, self.alive_threshold, self.budget,
                                     self._scores(loop))
        self._repair(loop)
        self._zero_dead()
        after = {name: int((~dead).sum()) for name, dead in self.dead.items()}
        removed = {name: before[name] - after[name] for name in before if before[name] != after[name]}
        loop.emit({"event": "warning", "text": f"group Lasso had not met its target at the end of the stage ({what}); "
                   f"the weakest remaining units were removed to meet it: "
                   + ", ".join(f"{name} {before[name]} -> {after[name]}" for name in removed)
                   + ". Set iss.reach_by to let lambda get there itself, or iss.unmet: fail to stop instead."})
        loop.emit({"event": "target_completed", "step": loop.state.step, "removed": removed, "kept": after})
        return True

    def alive(self, norms: dict[str, Tensor]) -> dict[str, int]:
        return {name: int((values > self.alive_threshold).sum()) for name, values in norms.items()}

    def annotate(self, loop: "Loop", event: Event) -> None:
        if event["event"] == "epoch":
            event["alive"] = self.alive(group_norms(self.params, self.sets))
        elif event["event"] == "step" and self.norms is not None:
            event["penalty"] = penalty(self.norms, self.current or self.lambdas)
            event["alive"] = self.alive(self.norms)
            if self.steering is not None:
                event["lambda_scale"] = self.steering.scale
