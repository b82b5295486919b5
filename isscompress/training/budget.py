"""A compute or size budget for ISS: what a model keeping so many units per group set would cost.

The cost is the architecture's own count (multiply-adds per token or parameters) of the model that
shrinking would produce: sets that must keep one width (both directions of a layer) at the widest of
them, a projection narrower than its cells, so the budget is judged on what will really be built.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..core.architecture import Architecture
from ..core.thresholding import legal_widths
from ..recipe import BudgetSection

Cost = Callable[[Mapping[str, int]], float]


def budget_cost(spec: Architecture, budget: BudgetSection) -> tuple[Cost, float, str]:
    """(cost of keeping ``alive[set]`` units per set, the limit in the same unit, what is counted)."""
    if budget.macs is not None:
        what, value = "multiply-adds per token", budget.macs

        def measure(s: Architecture) -> float:
            return float(sum(s.macs_per_token().values()))
    else:
        what, value = "parameters", budget.parameters

        def measure(s: Architecture) -> float:
            return float(sum(s.parameter_counts().values()))

    sets = spec.group_sets()
    full = measure(spec)
    limit = value * full if value <= 1 else value

    def cost(alive: Mapping[str, int]) -> float:
        wanted = {gs.name: max(1, alive.get(gs.name, gs.size)) for gs in sets}
        return measure(spec.with_kept(legal_widths(wanted, sets)))

    return cost, limit, what
