"""What runs around the training loop's steps: event reporting, task metrics, saving (the ISS regulariser is
:mod:`.iss_hook`'s hook).

A hook overrides any of :class:`Hook`'s methods; the loop calls every hook at each point in order.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from .loop import Loop

Event = dict[str, Any]


class Hook:
    """No-op base: a hook overrides what it needs."""

    def start(self, loop: "Loop") -> None:
        """The loop is built (parameters, optimizer, resumed state) and about to train."""

    def before_clip(self, loop: "Loop") -> None:
        """Gradients are in ``.grad``; clipping and the optimizer step come next."""

    def after_step(self, loop: "Loop") -> None:
        """The optimizer step is done."""

    def annotate(self, loop: "Loop", event: Event) -> None:
        """Add fields to a step or epoch event before it is reported."""

    def on_event(self, event: Event) -> None:
        """A step or epoch event, complete."""

    def on_checkpoint(self, loop: "Loop") -> None:
        """A save point (every ``save_every`` steps, each epoch end, a stop signal); main process only."""

    def finish(self, loop: "Loop") -> bool:
        """Training is over (not interrupted); True when the hook changed the weights, so the loop saves again."""
        return False


class Report(Hook):
    """Hands every event to a callback (progress bars, a JSON-lines log)."""

    def __init__(self, callback: Callable[[Event], None]) -> None:
        self.callback = callback

    def on_event(self, event: Event) -> None:
        self.callback(event)


class TaskMetricHook(Hook):
    """A user model's own metrics (its factory's ``evaluate``) while it is fine-tuned: right after the units are
    chosen (the hooks before this one have started) and at every epoch's end, in the events — so the effect of the
    method is seen on the task, not only on the loss. Measured on a CPU copy in eval mode, the run untouched."""

    def __init__(self, evaluate: Callable[[Any], Any]) -> None:
        self.evaluate = evaluate

    def _measure(self, loop: "Loop") -> dict[str, float]:
        copy_ = copy.deepcopy(loop.inner).cpu().eval()
        with torch.no_grad(), torch.random.fork_rng():
            return {str(name): float(value) for name, value in dict(self.evaluate(copy_)).items()}

    def start(self, loop: "Loop") -> None:
        loop.emit({"event": "metrics", "step": loop.state.step, "metrics": self._measure(loop)})

    def annotate(self, loop: "Loop", event: Event) -> None:
        if event["event"] == "epoch":
            event["metrics"] = self._measure(loop)


class Save(Hook):
    """Calls ``save(model, train_state)`` at every save point."""

    def __init__(self, save: Callable[[Any, Any], None]) -> None:
        self.save = save

    def on_checkpoint(self, loop: "Loop") -> None:
        self.save(loop.inner, loop.state)
