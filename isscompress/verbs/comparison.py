"""What ``report`` measures by running both models: a user model's output gap and its factory's task metrics on
its own probe inputs, and the speed of each kind of model on its own workload (a stack on tokens, another model on
calls of its forward)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..architectures.traced import TracedModel
from ..errors import IsscompressError
from ..io.loading import Checkpoint
from ..measure.output_gap import OutputGap, compare_outputs
from ..measure.speed import SpeedSample, interleaved, measure_speed
from ..training.tasks import floats

Call = Callable[[], Any]


def own_input_calls(original: Checkpoint, shrunk: Checkpoint, before: nn.Module, after: nn.Module
                    ) -> tuple[Call, Call] | None:
    """Each model's forward on its own probe inputs (a shrunk user model's are cut where they pass states in); None
    for a stack (forward(inputs, hidden)), which is measured on tokens: perplexity and token throughput."""
    if not isinstance(original.spec, TracedModel):
        return None
    first, second = original.spec.probe_inputs(), shrunk.spec.probe_inputs()
    return (lambda: before(*first)), (lambda: after(*second))


def output_gap(before: Call, after: Call) -> OutputGap:
    with torch.no_grad():
        return compare_outputs(floats(after()), floats(before()))


def task_metrics(original: Checkpoint, shrunk: Checkpoint | None, before: nn.Module, after: nn.Module | None
                 ) -> dict[str, tuple[float, float | None]]:
    """The metrics a user's factory measures its task with (its ``evaluate``), on both models."""
    evaluate = getattr(original.spec, "evaluate", None)
    if evaluate is None:
        return {}

    def measured(model: nn.Module, name: str) -> dict[str, float]:
        try:
            with torch.no_grad():
                values = evaluate(model.eval())
            return {str(name): float(value) for name, value in dict(values).items()}
        except Exception as err:
            raise IsscompressError(f"The factory's evaluate failed on {name}: {type(err).__name__}: "
                                   f"{' '.join(str(err).split())[:200]}.", "Call it from python to see the whole "
                                   "error; it receives the model and returns {metric name: value}.") from err

    first = measured(before, original.name)
    second = measured(after, shrunk.name) if after is not None and shrunk is not None else {}
    return {name: (value, second.get(name)) for name, value in first.items()}


def metric_rules(original: Checkpoint) -> dict[str, dict[str, Any]]:
    """What the factory's file says of its metrics (``METRICS``): which way is better, and their noise."""
    return dict(getattr(getattr(original.spec, "evaluate", None), "rules", None) or {})


def speed_samples(before: nn.Module, after: nn.Module, calls: tuple[Call, Call] | None, repeats: int,
                  path: str) -> list[SpeedSample]:
    """A stack (forward(inputs, hidden)) is timed on time steps: decoding one at a time, and a batch; another model
    on calls of its forward with its probe inputs (a user model's example inputs)."""
    if calls is None:
        return measure_speed(before, after, repeats=repeats, path=path)
    with torch.no_grad():
        times = interleaved(*calls, repeats)
    return [SpeedSample("example_inputs", "eager", 1, tuple(times[0]), tuple(times[1]))]
