"""What ``report`` measures by running both models: a user model's output gap and its factory's task metrics on
its own probe inputs, the speed of each kind of model on its own workload (a stack on tokens, another model on
calls of its forward), and the shrunk stack quantised to int8."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..architectures.stack import ModelSpec
from ..errors import IsscompressError
from ..io.loading import Checkpoint
from ..measure.output_gap import OutputGap, compare_outputs
from ..measure.perplexity import Perplexity, perplexity
from ..measure.speed import SpeedSample, interleaved, measure_speed
from ..recipe import EvaluateSection
from ..training.tasks import floats

Call = Callable[[], Any]


def own_input_calls(original: Checkpoint, shrunk: Checkpoint, before: nn.Module, after: nn.Module
                    ) -> tuple[Call, Call] | None:
    """Each model's forward on its own probe inputs (a shrunk user model's are cut where they pass states in; an ONNX
    graph's are its inputs' shapes); None for a stack (forward(inputs, hidden)), which is measured on tokens:
    perplexity and token throughput."""
    if isinstance(original.spec, ModelSpec):
        return None
    first, second = original.spec.probe_inputs(), shrunk.spec.probe_inputs()
    return (lambda: before(*first)), (lambda: after(*second))


def output_gap(before: Call, after: Call) -> OutputGap:
    with torch.no_grad():
        return compare_outputs(floats(after()), floats(before()))


def task_metrics(original: Checkpoint, shrunk: Checkpoint | None, before: nn.Module, after: nn.Module | None,
                 original_values: dict[str, float] | None = None) -> dict[str, tuple[float, float | None]]:
    """The metrics a user's factory measures its task with (its ``evaluate``), on both models (the original's
    taken from ``original_values`` when an earlier report measured them)."""
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

    first = original_values if original_values is not None else measured(before, original.name)
    second = measured(after, shrunk.name) if after is not None and shrunk is not None else {}
    return {name: (value, second.get(name)) for name, value in first.items()}


def metric_rules(original: Checkpoint) -> dict[str, dict[str, Any]]:
    """What the factory's file says of its metrics (``METRICS``): which way is better, and their noise."""
    return dict(getattr(getattr(original.spec, "evaluate", None), "rules", None) or {})


SPEED_ON = ("example", "batches")
SPEED_BATCHES = 10  # the factory's first batches, timed as one workload


def batch_calls(original: Checkpoint, shrunk: Checkpoint, before: nn.Module, after: nn.Module
                ) -> tuple[Call, Call, int]:
    """Each model's forward over its factory's first batches (the inputs the user chose for training), and how many."""
    first, second = _first_batches(original), _first_batches(shrunk)

    def run(model: nn.Module, batches: list[tuple]) -> None:
        for batch in batches:
            model(*batch)

    for model, batches, checkpoint in ((before, first, original), (after, second, shrunk)):
        try:  # once up front, so that a batch the model cannot take is one error naming it, not a traceback
            with torch.no_grad():
                model(*batches[0])
        except Exception as err:
            raise IsscompressError(f"{checkpoint.name} failed on its factory's first batch: {type(err).__name__}: "
                                   f"{' '.join(str(err).split())[:200]}.", "Time the example inputs instead "
                                   "(--speed-on example), or give batches the shrunk model takes.") from err
    return (lambda: run(before, first)), (lambda: run(after, second)), min(len(first), len(second))


def _first_batches(checkpoint: Checkpoint) -> list[tuple]:
    batches = getattr(checkpoint.spec, "batches", None)
    if batches is None:
        which = "its factory returns none" if hasattr(checkpoint.spec, "batches") else "it has no --arch factory"
        raise IsscompressError(f"--speed-on batches times the --arch factory's batches; {checkpoint.name}: {which}.",
                               "Return (model, example_inputs, batches) from the factory, or time the example "
                               "inputs (--speed-on example).")
    found = []
    for batch in batches() if callable(batches) else batches:
        found.append(batch if isinstance(batch, tuple) else (batch,))
        if len(found) == SPEED_BATCHES:
            break
    if not found:
        raise IsscompressError(f"{checkpoint.name}'s factory gave no batches to time.",
                               "Return at least one batch, or time the example inputs (--speed-on example).")
    return found


def check_speed_on(speed_on: str) -> None:
    if speed_on not in SPEED_ON:
        raise IsscompressError(f"Unknown --speed-on {speed_on!r}.", f"Use one of: {', '.join(SPEED_ON)}.")


def speed_samples(checkpoints: tuple[Checkpoint, Checkpoint], before: nn.Module, after: nn.Module,
                  calls: tuple[Call, Call] | None, repeats: int, path: str, speed_on: str = "example"
                  ) -> list[SpeedSample]:
    """A stack (forward(inputs, hidden)) is timed on time steps: decoding one at a time, and a batch; another model
    on calls of its forward: ``calls`` (its example inputs), or with ``speed_on="batches"`` its factory's first
    batches."""
    if calls is None:
        if speed_on != "example":
            raise IsscompressError(f"--speed-on {speed_on} times a user model's forward on its factory's batches; "
                                   f"{checkpoints[0].name} is a language-model stack, timed on tokens (decoding "
                                   "at batch 1 and a 20 x 35 batch).", "Leave out --speed-on.")
        return measure_speed(before, after, repeats=repeats, path=path)
    workload, count = "example_inputs", 1
    if speed_on == "batches":
        *calls, count = batch_calls(*checkpoints, before, after)
        workload = "factory_batches"
    with torch.no_grad():
        times = interleaved(*calls, repeats)
    return [SpeedSample(workload, "eager", count, tuple(times[0]), tuple(times[1]))]


@dataclass
class Int8Column:
    """The shrunk model quantised to int8 (``isscompress export --quantize int8``), measured like the others."""

    bytes: int  # its serialized state dict (packed int8 weights)
    perplexity: Perplexity | None
    speed: list[SpeedSample]  # the original float32 model (before) against it (after)

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "perplexity": self.perplexity.to_dict() if self.perplexity else None,
                "speed": [s.to_dict() for s in self.speed]}


def int8_column(original: Checkpoint, shrunk: Checkpoint, batches, evaluate: EvaluateSection, level: str,
                 speed: bool, repeats: int) -> Int8Column:
    from ..deploy.quantize import quantize_int8, serialized_bytes

    quantized = quantize_int8(shrunk.model())
    ppl = perplexity(quantized, batches, evaluate.bptt, level=level) if batches is not None else None
    samples = measure_speed(original.model(), quantized, repeats=repeats) if speed else []
    return Int8Column(serialized_bytes(quantized), ppl, samples)


def refuse_int8(shrunk: Checkpoint | None, user_model: bool) -> None:
    if shrunk is None:
        raise IsscompressError("report --int8 quantises the shrunk model.", "Give the original and the shrunk one.")
    if user_model:
        raise IsscompressError("report --int8 quantises a recurrent stack (a language model or a bare nn.LSTM/GRU "
                               f"stack); {shrunk.name} is your own model's.", "Leave out --int8, or quantise the "
                               "shrunk model yourself (torch.ao.quantization.quantize_dynamic).")
