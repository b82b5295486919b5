"""The functions a user's ``--arch`` file gives (batches, ``evaluate``, ``task_loss``), called so that what goes
wrong inside them is reported as theirs: one paragraph naming the hook and the file, exit 1 — not "a bug in
isscompress". What they return is checked where a wrong type would otherwise do nothing silently (a ``task_loss``
that returns a float adds a constant: no gradient, no effect).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from torch import Tensor

from ..errors import IsscompressError


class UserCodeError(IsscompressError):
    """A function of the user's ``--arch`` file raised, or returned what it must not."""


def _raised(hook: str, path: Path, err: Exception) -> UserCodeError:
    return UserCodeError(f"--arch: {hook} in {path} raised {type(err).__name__}: {str(err)[:300]}.",
                         "The error is in that function of your file; call it from python to see the whole traceback.")


def guarded(hook: str, path: Path, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, with an exception it raises reported as the user's (isscompress's own errors pass through)."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except IsscompressError:
            raise
        except Exception as err:
            raise _raised(hook, path, err) from err

    return call


def _iterate(items: Iterable[Any], hook: str, path: Path) -> Iterator[Any]:
    try:
        iterator = iter(items)
    except TypeError:
        raise UserCodeError(f"--arch: {hook} in {path} gave a {type(items).__name__}, which is not a sequence of "
                            "input batches.", "Return a list of input tuples, or a function returning an iterable "
                            "of them.") from None
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except IsscompressError:
            raise
        except Exception as err:
            raise _raised(hook, path, err) from err
        yield item


def guarded_batches(batches: Any, path: Path) -> Any:
    """A factory's batches with the user's errors named: a function stays a function (fresh batches each epoch),
    any other iterable is read once into a list (a generator would be empty from the second epoch on)."""
    if batches is None:
        return None
    if callable(batches):
        make = guarded("batches()", path, batches)
        return lambda: _iterate(make(), "the iterable batches() returned", path)
    return list(_iterate(batches, "the batches", path))


def guarded_task_loss(task_loss: Callable[..., Any] | None, path: Path) -> Callable[..., Tensor] | None:
    """``task_loss(outputs, batch)``, which must return a scalar tensor the gradient flows through."""
    if task_loss is None:
        return None
    call = guarded("task_loss(outputs, batch)", path, task_loss)

    def checked(outputs: Any, batch: Any) -> Tensor:
        loss = call(outputs, batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            kind = type(loss).__name__ if not isinstance(loss, Tensor) else f"a tensor of shape {tuple(loss.shape)}"
            raise UserCodeError(f"--arch: task_loss(outputs, batch) in {path} returned {kind}, not a scalar tensor; "
                                "a number would add a constant to the loss and teach nothing.",
                                "Return the loss as a torch scalar computed from outputs (e.g. F.cross_entropy(...)).")
        if not loss.requires_grad:
            raise UserCodeError(f"--arch: task_loss(outputs, batch) in {path} returned a tensor that does not depend "
                                "on the outputs (no gradient), so it would teach nothing.",
                                "Compute it from outputs, without .item(), .detach() or torch.no_grad().")
        return loss

    return checked


class TaskMetrics:
    """A factory's ``evaluate(model) -> {metric: value}``, with what its file says of each metric in ``METRICS``:
    which way is better and, optionally, its noise (a standard error, or the spread of two halves) — so that
    ``report`` can tell a loss beyond noise from noise, as it does for perplexity."""

    def __init__(self, evaluate: Callable[..., Any], rules: dict[str, dict[str, Any]]) -> None:
        self.evaluate, self.rules = evaluate, rules  # report names the model evaluate failed on

    def __call__(self, model: Any) -> Any:
        return self.evaluate(model)


def metric_rules(declared: Any, path: Path) -> dict[str, dict[str, Any]]:
    """``METRICS = {"accuracy": {"better": "higher", "noise": 0.003}, "PER": {"better": "lower"}}``, checked."""
    if declared is None:
        return {}
    shape = "METRICS = {'accuracy': {'better': 'higher', 'noise': 0.003}} (noise optional, in the metric's units)"
    if not isinstance(declared, dict) or not all(
            isinstance(name, str) and isinstance(rule, dict) and rule.get("better") in ("higher", "lower")
            and set(rule) <= {"better", "noise"} and (rule.get("noise") is None or (
                isinstance(rule["noise"], (int, float)) and not isinstance(rule["noise"], bool) and rule["noise"] >= 0))
            for name, rule in declared.items()):
        raise UserCodeError(f"--arch: METRICS in {path} does not say, for each metric, which way is better.",
                            f"Write it as {shape}.")
    return {name: dict(rule) for name, rule in declared.items()}
