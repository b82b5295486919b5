"""Meeting a target every time: lambda steered along a schedule to it, and what is left completed at the end.

A fixed lambda reaches a budget only if it was guessed right: too small and the stage ends at 1.00x, too large and
units die at once. With ``iss.reach_by`` lambda is scaled as the stage goes: the alive units' cost should follow
Zhu & Gupta's cubic schedule (fast at first, gentle near the end) from the model's full cost down to the limit by
that fraction of the stage's steps; while the model is behind the schedule lambda grows (up to 100x per tenth of
the stage), and while it is ahead lambda holds. ``iss.method: gradual`` follows the same schedule without lambda:
the weakest units are removed in ``removal_rounds`` rounds, each down to where the schedule is then. Whatever is
still above a target when the stage ends is removed weakest-first (``iss.unmet: complete``, said and logged) or
refused (``fail``): never a silent 1.00x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..recipe import IssSection
from .budget import Cost

STATE_KEY = "lambda_scale"  # where a resumed run finds the scale it had reached (TrainState.hooks)
DEFAULT_REACH_BY = 0.75  # method gradual without iss.reach_by: the targets reached at three quarters of the stage


def cubic_progress(step: float, deadline: float) -> float:
    """How much of the way to the target a schedule has gone after ``step`` steps (Zhu & Gupta 2017): 0 at the start,
    1 at ``deadline``, fast at first and gentle near the end."""
    return 1.0 - (1.0 - min(1.0, step / deadline)) ** 3


def between(full: float, limit: float, progress: float) -> float:
    """The cost ``progress`` (0..1) of the way from the full model's to the limit."""
    return full - (full - limit) * progress


def round_steps(total_steps: int, reach_by: float, rounds: int) -> list[int]:
    """The steps after which ``method: gradual`` removes units: ``rounds`` of them, evenly up to the deadline."""
    deadline = max(1.0, reach_by * total_steps)
    return sorted({max(1, round(deadline * (index + 1) / rounds)) for index in range(rounds)})


def scheduled_goal(iss: IssSection, sizes: Mapping[str, int], budget: "tuple[Cost, float] | None", progress: float
                   ) -> "tuple[IssSection, tuple[Cost, float] | None]":
    """The part of the way to ``iss``'s targets a removal round aims at: each target width and the budget's limit
    moved ``progress`` (0..1) of the way from the full model."""
    widths = {name: max(width, round(sizes[name] - (sizes[name] - width) * progress))
              for name, width in iss.target_widths.items()}
    goal = None
    if budget is not None:
        cost, limit = budget
        goal = (cost, between(cost({}), limit, progress))
    return iss.model_copy(update={"target_widths": widths}), goal


@dataclass
class LambdaSteering:
    """The scale on every set's lambda, steered towards the budget's schedule."""

    cost: Cost
    limit: float
    full: float
    deadline: float  # the step by which the limit should be reached
    growth: float  # the factor per step while behind
    scale: float = 1.0

    @classmethod
    def for_stage(cls, cost: Cost, limit: float, total_steps: int, reach_by: float, scale: float = 1.0
                  ) -> "LambdaSteering":
        return cls(cost, limit, cost({}), max(1.0, reach_by * total_steps), 100 ** (1 / max(1.0, 0.1 * total_steps)),
                   scale)

    def scheduled(self, step: int) -> float:
        """The cost the alive units should have after ``step`` steps: full at 0, the limit at the deadline."""
        return between(self.full, self.limit, cubic_progress(step, self.deadline))

    def update(self, step: int, alive: Mapping[str, int]) -> None:
        if self.cost(alive) > self.scheduled(step):
            self.scale *= self.growth
