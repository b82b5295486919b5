"""Measured inference speed of two models, side by side in one process.

Repetitions alternate between the models so both see the same machine load; we report
medians and min-max, and the ratio per repetition. The CPU kernel is chosen per workload
and named in the result: token-by-token decoding runs on PyTorch's native RNN kernel
(oneDNN re-lays-out the weights on every call, 6x slower for a 1500-wide layer), a
20 x 35 batch runs on oneDNN, PyTorch's default on CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ..kernels import rnn_kernel

WORKLOADS = {"decode_batch1": ("native", 1, 1), "batch20x35": ("onednn", 20, 35)}
CALL_WORKLOADS = ("example_inputs", "factory_batches")  # a user model's forward calls, not a stack's time steps


@dataclass(frozen=True)
class SpeedSample:
    workload: str
    kernel: str  # PyTorch's RNN kernel on the eager path; the runtime's name otherwise
    tokens: int
    before_seconds: tuple[float, ...]
    after_seconds: tuple[float, ...]
    path: str = "eager"  # the runtime: eager, torchscript, onnxruntime

    @property
    def unit(self) -> str:
        """What ``tokens`` counts: time steps of a stack, calls of another model's forward."""
        return "calls" if self.workload in CALL_WORKLOADS else "tokens"

    def _median(self, values: tuple[float, ...]) -> float:
        return statistics.median(values)

    @property
    def before_tokens_per_s(self) -> float:
        return self.tokens / self._median(self.before_seconds)

    @property
    def after_tokens_per_s(self) -> float:
        return self.tokens / self._median(self.after_seconds)

    @property
    def speedups(self) -> list[float]:
        return [b / a for b, a in zip(self.before_seconds, self.after_seconds)]

    @property
    def speedup(self) -> float:
        return statistics.median(self.speedups)

    def to_dict(self) -> dict:
        """Named for what is counted: ``tokens`` and ``before_tokens_per_s`` for a stack's time steps, ``calls`` and
        ``before_calls_per_s`` for forward calls of another model on its example inputs."""
        unit, fields = self.unit, asdict(self)
        fields[unit] = fields.pop("tokens")
        return {**fields, "unit": unit, f"before_{unit}_per_s": self.before_tokens_per_s,
                f"after_{unit}_per_s": self.after_tokens_per_s, "speedup_median": self.speedup,
                "speedup_min": min(self.speedups), "speedup_max": max(self.speedups)}


def interleaved(before: Callable[[], object], after: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Seconds per call of each, alternating so both see the same machine load (one untimed warm-up each). The one
    timer of both report paths."""
    before(), after()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for call, out in ((before, times[0]), (after, times[1])):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return times


def run_once(model: nn.Module, inputs: torch.Tensor, steps_per_call: int) -> float:
    start = time.perf_counter()
    hidden = None
    for position in range(0, inputs.size(0), steps_per_call):
        _, hidden = model(inputs[position : position + steps_per_call], hidden)
    return time.perf_counter() - start


@torch.inference_mode()
def measure_speed(
    before: nn.Module, after: nn.Module, *, repeats: int = 5, decode_tokens: int = 100, path: str = "eager"
) -> list[SpeedSample]:
    """Interleaved timing of both models for each workload (one warm-up run each, not timed), on the runtime
    ``path`` (eager, torchscript, onnxruntime; "auto": the fastest measured, see deploy.runtimes)."""
    from ..deploy.runtimes import default_path, runtime

    path = default_path(before) if path == "auto" else path
    spec = before.spec
    before, after = runtime(before, path), runtime(after, path)
    samples = []
    for workload, (kernel, batch, steps_per_call) in WORKLOADS.items():
        steps = decode_tokens if steps_per_call == 1 else steps_per_call
        inputs = spec.probe_inputs(steps=steps, batch=batch, seed=1)
        kernel = kernel if path == "eager" else path
        with rnn_kernel(kernel) if path == "eager" else contextlib.nullcontext():
            first, second = before.eval(), after.eval()
            times = interleaved(lambda: run_once(first, inputs, steps_per_call),
                                lambda: run_once(second, inputs, steps_per_call), repeats)
        samples.append(SpeedSample(workload, kernel, steps * batch, tuple(times[0]), tuple(times[1]), path))
    return samples
