"""``keep: best``: the weights of the epoch that validated best, restored at the end of a stage whose units are fixed.

The score is what the stage already measures at each epoch's end (perplexity on the validation text for a language
model, the factory's declared metric for a user model), so keeping the best costs one copy of the weights in memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from ..errors import RecipeError
from .hooks import Event, Hook

if TYPE_CHECKING:
    from .loop import Loop


class KeepBest(Hook):
    """Remembers the weights after the best-scoring epoch (``score(event)``: lower is better unless ``higher``) and
    puts them back when the stage ends; the epoch event says which epoch is best so far (``best``)."""

    def __init__(self, score: Callable[[Event], float | None], name: str, higher: bool = False) -> None:
        self.score, self.name, self.higher = score, name, higher
        self.best: tuple[float, int] | None = None  # (score, epoch)
        self.weights: dict[str, Tensor] | None = None
        self.last_epoch = 0
        self.resumed = False

    def start(self, loop: "Loop") -> None:
        self.resumed = loop.state.epoch > 1 or loop.state.window > 0

    def annotate(self, loop: "Loop", event: Event) -> None:
        if event["event"] != "epoch":
            return
        self.last_epoch = event["epoch"]
        value = self.score(event)
        if value is None or not math.isfinite(value):
            return
        if self.best is None or (value > self.best[0] if self.higher else value < self.best[0]):
            self.best = (value, event["epoch"])
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in loop.inner.state_dict().items()}
        event["best_epoch"] = self.best[1]

    def finish(self, loop: "Loop") -> bool:
        if self.best is None or self.weights is None:
            loop.emit({"event": "warning", "text": f"keep: best found no {self.name} to compare at any epoch's end; "
                       "the last epoch's weights are kept."})
            return False
        value, epoch = self.best
        since = " (the epochs since the resume)" if self.resumed else ""
        loop.emit({"event": "kept_best", "epoch": epoch, "score": value, "metric": self.name,
                   "text": f"keep: best — epoch {epoch}'s weights are kept ({self.name} {value:.4g}, the best "
                           f"of the stage{since})"})
        if epoch == self.last_epoch:
            return False
        with torch.no_grad():
            loop.inner.load_state_dict(self.weights)
        return True


def perplexity_keeper(keep: str, validates: bool, stage: str) -> KeepBest | None:
    """A language model's ``keep: best``: by the validation perplexity each epoch's end measures."""
    if keep != "best":
        return None
    if not validates:
        raise RecipeError(f"{stage}.keep: best compares each epoch's validation perplexity, and the recipe gives no "
                          "validation text.", "Set data.valid, or keep: last.")
    return KeepBest(lambda event: event.get("valid_ppl"), "validation perplexity")


def metric_keeper(keep: str, rules: dict | None, stage: str) -> KeepBest | None:
    """A user model's ``keep: best``: by the first metric its factory's ``METRICS`` declares, in its direction."""
    if keep != "best":
        return None
    if not rules:
        raise RecipeError(f"{stage}.keep: best compares each epoch's task metric, and the --arch factory declares "
                          "none.", "Define evaluate (the factory's fourth return value) and METRICS = {name: "
                          "{'better': 'higher' or 'lower'}} in the --arch file, or keep: last.")
    name, rule = next(iter(rules.items()))
    return KeepBest(lambda event: event.get("metrics", {}).get(name), name, higher=rule.get("better") == "higher")
