"""One plain training loop in the shape of word_language_model's ``train()``; task, objective and hooks plug in.

A task (:mod:`.tasks`) gives the batches and their loss — truncated-BPTT windows of a language model with the
hidden state carried, or a user model's unlabelled batches against a frozen teacher — and the loop does the rest
for both: gradient clipping, SGD or Adam, per-epoch lr decay, the NaN guard, save points, resume and stop signals.
What a language model minimises is an objective (:mod:`.objectives`); ISS, reporting and saving are hooks
(:mod:`.hooks`).
Distributed data parallel runs on PyTorch's own engine: under ``torchrun`` every rank takes
its share of the batch columns and DDP averages the gradients, so the update equals the
single-process one.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, DataError, Diverged, Interrupted
from ..recipe import Schedule
from .distributed import Distributed
from .hooks import Event, Hook
from .objectives import LanguageModelLoss, Objective
from .tasks import LanguageModelTask, Task


@dataclass
class TrainState:
    """Where a run is, for --resume: position, optimizer, lr, RNG and the carried hidden state."""

    epoch: int = 1
    window: int = 0  # windows already done in this epoch
    step: int = 0
    lr: float = 0.0
    best_valid: float = math.inf
    optimizer: dict = field(default_factory=dict)
    rng: Tensor | None = None
    hidden: list | None = None
    hooks: dict = field(default_factory=dict)  # numbers a hook carries across a resume (lambda's steered scale)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _optimizer(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    if schedule.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=schedule.lr)
    return torch.optim.SGD(model.parameters(), lr=schedule.lr)


class _StopSignals:
    """SIGINT/SIGTERM set a flag; the loop saves at the next step boundary and stops."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(
    model: nn.Module,
    train: Tensor,
    valid: Tensor | None,
    schedule: Schedule,
    *,
    objective: Objective | None = None,
    hooks: Sequence[Hook] = (),
    dist: Distributed | None = None,
    state: TrainState | None = None,
    eval_bptt: int = 35,
) -> TrainState:
    """Train a language model on ``train`` (``[steps, batch]`` ids) to minimise ``objective`` (next-token
    cross-entropy by default); returns the final TrainState. (:func:`fit_task` for any other task.)"""
    dist = dist or Distributed.single()
    task = LanguageModelTask(dist.shard_columns(train), valid, schedule.bptt, objective or LanguageModelLoss(),
                             eval_bptt)
    return fit_task(model, task, schedule, hooks=hooks, dist=dist, state=state)


def fit_task(
    model: nn.Module,
    task: Task,
    schedule: Schedule,
    *,
    hooks: Sequence[Hook] = (),
    dist: Distributed | None = None,
    state: TrainState | None = None,
) -> TrainState:
    """Train ``model`` on ``task``'s batches with ``schedule``; returns the final TrainState.

    Hooks see every step, event and save point (every ``schedule.save_every`` steps, each epoch end,
    and SIGINT/SIGTERM, after which :class:`Interrupted` is raised)."""
    dist = dist or Distributed.single()
    inner = model.to(dist.device)
    loop = Loop(inner, dist.wrap(inner), _optimizer(inner, schedule), schedule, dist,
                state or TrainState(lr=schedule.lr), task, tuple(hooks))
    try:  # a resumed state was type-checked when read; whether it fits this model's optimizer shows only here
        if loop.state.optimizer:
            loop.optimizer.load_state_dict(loop.state.optimizer)
        if loop.state.rng is not None:
            torch.set_rng_state(loop.state.rng)
        for param, values in loop.optimizer.state.items():
            for name, value in values.items():
                if isinstance(value, Tensor) and value.dim() and value.shape != param.shape:
                    raise ValueError(f"optimizer state '{name}' of shape {tuple(value.shape)} for a weight of shape "
                                     f"{tuple(param.shape)}")
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        kind = type(err).__name__
        raise CheckpointError(f"The training state to resume from does not fit this model and schedule ({kind}: "
                              f"{str(err)[:200]}).", "Start again without --resume.") from None
    if loop.state.rng is None:
        torch.manual_seed(schedule.seed)
    loop.params = dict(inner.named_parameters())
    for hook in loop.hooks:
        hook.start(loop)
    loop.run()
    return loop.state


@dataclass
class Loop:
    """The pieces of one training run, so that each part of an epoch is its own short method."""

    inner: nn.Module
    runner: nn.Module  # ``inner``, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    dist: Distributed
    state: TrainState
    task: Task
    hooks: tuple[Hook, ...]
    params: dict[str, Tensor] = field(default_factory=dict)  # by name, for hooks (built once, not per step)

    def run(self) -> None:
        schedule, state = self.schedule, self.state
        with _StopSignals() as stop:
            while state.epoch <= schedule.epochs:
                self.runner.train()
                self.task.start_epoch(self)
                total = self.task.count()
                for group in self.optimizer.param_groups:
                    group["lr"] = state.lr
                started, tokens, loss_sum, done = time.perf_counter(), 0, 0.0, 0
                for index, batch in self.task.batches(state.window):
                    loss, covered = self.step(batch)
                    state.step, state.window = state.step + 1, index + 1
                    tokens, loss_sum, done = tokens + covered * self.dist.world_size, loss_sum + loss, done + 1
                    if state.step % schedule.log_every == 0 or state.window == total:
                        self.log_step(loss_sum / done, tokens / max(time.perf_counter() - started, 1e-9), total)
                    if schedule.save_every and state.step % schedule.save_every == 0:
                        self.checkpoint()
                    if stop.received is not None:
                        self.checkpoint()
                        raise Interrupted(f"Stopped by signal {signal.Signals(stop.received).name} at step "
                                          f"{state.step}; the checkpoint and training state were saved.",
                                          "Run the same command with --resume to continue.")
                    if schedule.max_steps and state.step >= schedule.max_steps:
                        break
                if done == 0 and state.window == 0:  # (a resumed epoch may have had its last batch already)
                    raise DataError(f"Epoch {state.epoch} had no batches to train on, so nothing was learned.",
                                    "Give training data: the recipe's data.train, or the --arch factory's batches.")
                self.end_epoch(loss_sum / max(done, 1), time.perf_counter() - started)
                if schedule.max_steps and state.step >= schedule.max_steps:
                    break
        if any([hook.finish(self) for hook in self.hooks]):  # every hook finishes; a change is saved
            self.checkpoint()

    def step(self, batch: Any) -> tuple[float, int]:
        """One batch: forward and loss (the task's), backward, hooks around clip and optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, covered = self.task.loss(self, batch)
        loss.backward()
        for hook in self.hooks:
            hook.before_clip(self)
        if self.schedule.clip:
            nn.utils.clip_grad_norm_(self.inner.parameters(), self.schedule.clip)
        self.optimizer.step()
        for hook in self.hooks:
            hook.after_step(self)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise Diverged(
                f"The training loss became {value} (NaN or Inf) at step {self.state.step + 1}; the last saved "
                "checkpoint is kept.",
                "Lower the learning rate (finetune.lr), the ISS strength (iss.lambda) or set finetune.clip.",
            )
        return value, covered

    def emit(self, event: Event) -> None:
        for hook in self.hooks:
            hook.annotate(self, event)
        for hook in self.hooks:
            hook.on_event(event)

    def log_step(self, loss: float, tokens_per_s: float, total: int | None) -> None:
        state = self.state
        self.emit({"event": "step", "epoch": state.epoch, "step": state.step, "window": state.window,
                   "windows": total, "loss": loss, **self.task.step_fields(loss), "lr": state.lr,
                   f"{self.task.unit}_per_s": tokens_per_s})

    def end_epoch(self, train_loss: float, seconds: float) -> None:
        """Validation, the epoch event, the lr decay, and a checkpoint at the start of the next epoch."""
        state, schedule = self.state, self.schedule
        event: Event = {"event": "epoch", "epoch": state.epoch, "step": state.step, "lr": state.lr,
                        "train_loss": train_loss, "seconds": seconds}
        validation = self.task.validate(self)
        event.update(validation)
        if "valid_ppl" in validation:
            improved = validation["valid_ppl"] < state.best_valid
            state.best_valid = min(state.best_valid, validation["valid_ppl"])
            decay = not improved if schedule.decay_on_plateau else state.epoch >= schedule.decay_start
        else:
            decay = state.epoch >= schedule.decay_start and not schedule.decay_on_plateau
        self.emit(event)
        if decay:
            state.lr *= schedule.lr_decay
        state.epoch += 1
        state.window = 0
        state.hidden = None
        self.checkpoint()

    def checkpoint(self) -> None:
        if not all(torch.isfinite(p).all() for p in self.inner.parameters()):
            raise Diverged(f"The weights became NaN or Inf at step {self.state.step}; the last good checkpoint is "
                           "kept.", "Lower the learning rate (finetune.lr) or the ISS strength (iss.lambda), or set "
                                    "finetune.clip.")
        self.state.optimizer = self.optimizer.state_dict()
        self.state.rng = torch.get_rng_state()
        if self.dist.is_main:
            for hook in self.hooks:
                hook.on_checkpoint(self)
