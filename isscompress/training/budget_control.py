"""Meeting a target every time: lambda steered along a schedule to it, and what is left completed at the end.

A fixed lambda reaches a budget only if it was guessed right: too small and the stage ends at 1.00x, too large and
units die at once. With ``iss.reach_by`` lambda is scaled as the stage goes: the alive units' cost should follow
Zhu & Gupta's cubic schedule (fast at first, gentle near the end) from the model's full cost down to the limit by
that fraction of the stage's steps; while the model is behind the schedule lambda grows (up to 100x per tenth of
the stage), and while it is ahead lambda holds. Whatever is still above a target when the stage ends is removed
weakest-first (``iss.unmet: complete``, said and logged) or refused (``fail``): never a silent 1.00x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .budget import Cost

STATE_KEY = "lambda_scale"  # where a resumed run finds the scale it had reached (TrainState.hooks)


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
        left = 1.0 - min(1.0, step / self.deadline)
        return self.limit + (self.full - self.limit) * left ** 3

    def update(self, step: int, alive: Mapping[str, int]) -> None:
        if self.cost(alive) > self.scheduled(step):
            self.scale *= self.growth
