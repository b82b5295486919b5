"""A compute or size budget for ISS: what a model keeping so many units per group set would cost.

The cost is the architecture's own count (multiply-adds per token or parameters) of the model that
shrinking would produce: sets that must keep one width (both directions of a layer) at the widest of
them, a projection narrower than its cells, so the budget is judged on what will really be built.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..core.architecture import Architecture
from ..core.groups import chosen_sets
from ..core.thresholding import legal_widths
from ..errors import RecipeError
from ..recipe import BudgetSection

Cost = Callable[[Mapping[str, int]], float]


def budget_cost(spec: Architecture, budget: BudgetSection, widths: str | None = None) -> tuple[Cost, float, str]:
    """(cost of keeping ``alive[set]`` units per set, the limit in the same unit, what is counted). With ``widths``
    (the recipe's ``iss.widths``), a budget those sets cannot meet even at one unit each is refused here, before any
    training: reaching for it would leave every layer a unit wide and still miss it."""
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

    if widths is not None:
        least = cost({gs.name: 1 for gs in chosen_sets(sets, widths)})
        if least > limit:
            others = "" if widths == "all" else " (the embedding and other widths stay whole with iss.widths: " \
                f"{widths})"
            raise RecipeError(f"recipe: iss.target asks for {limit:,.0f} {what} of {full:,.0f}, but even with one "
                              f"unit left in every set ISS may narrow the model keeps {least:,.0f}{others}.",
                              "Add `widths: all` to the iss section to narrow every width, or give a larger budget."
                              if widths != "all" else f"Give a budget above {least / full:.3f}.")
    return cost, limit, what
