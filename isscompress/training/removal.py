"""Which units go when they are chosen rather than driven to zero (``iss.method: one-shot``, and a target group
Lasso left unmet at the end of a stage): the weakest first, ranked by their norms or by their Taylor importance on
the stage's own loss (:mod:`isscompress.core.importance`)."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

from ..core.groups import GroupSet
from ..core.importance import taylor_scores
from ..core.thresholding import widest_per_key
from ..errors import DataError
from ..recipe import IssSection
from .budget import Cost

if TYPE_CHECKING:
    from .loop import Loop


@contextmanager
def side_pass(loop: "Loop") -> Iterator[None]:
    """Batches run for a measurement, not for training: the random stream, the carried state and the gradients are
    left as they were, so a run that measures is the same run, resumed or not."""
    hidden, device = loop.state.hidden, loop.dist.device
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        loop.task.start_epoch(loop)
        yield
    loop.optimizer.zero_grad(set_to_none=True)
    loop.state.hidden = hidden


def stage_steps(loop: "Loop", count_batches: bool = False) -> int | None:
    """The steps this stage takes (epochs x batches, capped by max_steps). Batches given by a function do not say
    how many there are: with ``count_batches`` they are counted by running the function once (a side pass)."""
    schedule, count = loop.schedule, loop.task.count()
    if count is None and count_batches:
        with side_pass(loop):
            count = sum(1 for _ in loop.task.batches(0))
    if not count:
        return None
    return min(schedule.max_steps or 10**12, schedule.epochs * count)


def first_batches(loop: "Loop", count: int, why: str) -> list:
    """The stage's first ``count`` batches, for a measurement (``why`` names it in the error when there are none)."""
    batches = [batch for _, batch in itertools.islice(loop.task.batches(0), count)]
    if not batches:
        raise DataError(f"{why} needs batches to run on, and the stage has none.", "Give training data.")
    return batches


def accumulated_taylor(loop: "Loop", sets: tuple[GroupSet, ...], batches: int) -> dict[str, Tensor]:
    """Taylor importance averaged over the stage's first ``batches`` batches, on the stage's own loss (distillation,
    the task's labels, or both)."""
    total: dict[str, Tensor] | None = None
    with side_pass(loop):
        chosen = first_batches(loop, batches, "iss.importance: taylor")
        for batch in chosen:
            loop.optimizer.zero_grad(set_to_none=True)
            loss, _ = loop.task.loss(loop, batch)
            loss.backward()
            scores = taylor_scores(loop.params, sets)
            total = scores if total is None else {name: total[name] + scores[name] for name in total}
    return {name: value / len(chosen) for name, value in total.items()}


def one_shot_removal(norms: dict[str, Tensor], sets: tuple[GroupSet, ...], iss: IssSection, alive_threshold: float,
                     budget: "tuple[Cost, float] | None", scores: dict[str, Tensor] | None = None
                     ) -> dict[str, Tensor]:
    """The units ``iss.method: one-shot`` removes: the weakest first (by ``scores``, else by their norms), one at a
    time, until every set is at its ``target_widths`` entry and the budget is met. A unit whose norm is at most
    ``alive_threshold`` is already gone. Sets that must keep one width lose units in step (only a set at the widest
    count of its family can lose one), so no unit is removed that a shrink would keep as zeros."""
    alive = {name: norm > alive_threshold for name, norm in norms.items()}
    ranking = {name: scores[name].to(norm.device) for name, norm in norms.items()} if scores is not None else norms
    now = {name: int(mask.sum()) for name, mask in alive.items()}
    # Scores of one kind of set (a layer's units) compare across sets; an embedding column and a gate row do not, so
    # with both kinds each set's scores count relative to its own median (its weakest units go first either way).
    mixed = len({gs.kind for gs in sets}) > 1
    scale = {gs.name: float(ranking[gs.name][alive[gs.name]].median()) if mixed and bool(alive[gs.name].any()) else 1.0
             for gs in sets}

    def wanted() -> bool:
        over_width = any(now[name] > width for name, width in iss.target_widths.items())
        return over_width or (budget is not None and budget[0](now) > budget[1])

    while wanted():
        widest = widest_per_key(now, sets)
        candidates = []
        for gs in sets:
            norm, floor = ranking[gs.name], iss.target_widths.get(gs.name, 0 if iss.target is not None else gs.size)
            if now[gs.name] > max(1, floor) and now[gs.name] == widest[gs.width_key]:
                index = int(torch.where(alive[gs.name], norm, torch.inf).argmin())
                candidates.append((float(norm[index]) / (scale[gs.name] or 1.0), gs.name, index))
        if not candidates:
            break
        _, name, index = min(candidates)
        alive[name][index] = False
        now[name] -= 1
    return {name: ~mask for name, mask in alive.items()}

