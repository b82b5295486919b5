"""One plain training loop in the shape of word_language_model's ``train()``; objective and hooks plug in.

Truncated BPTT with the hidden state carried and detached between windows, gradient
clipping, SGD or Adam, per-epoch lr decay. What is minimised is an objective
(:mod:`.objectives`); ISS, reporting and saving are hooks (:mod:`.hooks`).
Distributed data parallel runs on PyTorch's own engine: under ``torchrun`` every rank takes
its share of the batch columns and DDP averages the gradients, so the update equals the
single-process one.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..architectures.stack_module import detach_hidden
from ..data import bptt_windows, window_count
from ..errors import Diverged, Interrupted
from ..measure.perplexity import perplexity
from ..recipe import Schedule
from .distributed import Distributed
from .hooks import Event, Hook
from .objectives import LanguageModelLoss, Objective


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


def _windows(data: Tensor, bptt: int, skip: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    for index, (inputs, targets) in enumerate(bptt_windows(data, bptt)):
        if index >= skip:
            yield index, inputs, targets


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
    """Train ``model`` on ``train`` (``[steps, batch]`` ids) to minimise ``objective`` (next-token
    cross-entropy by default); returns the final TrainState.

    Hooks see every step, event and save point (every ``schedule.save_every`` steps, each epoch end,
    and SIGINT/SIGTERM, after which :class:`Interrupted` is raised).
    """
    dist = dist or Distributed.single()
    inner = model.to(dist.device)
    loop = Loop(inner, dist.wrap(inner), _optimizer(inner, schedule), schedule, dist,
                state or TrainState(lr=schedule.lr), objective or LanguageModelLoss(), tuple(hooks), eval_bptt)
    if loop.state.optimizer:
        loop.optimizer.load_state_dict(loop.state.optimizer)
    if loop.state.rng is not None:
        torch.set_rng_state(loop.state.rng)
    else:
        torch.manual_seed(schedule.seed)
    loop.params = dict(inner.named_parameters())
    for hook in loop.hooks:
        hook.start(loop)
    loop.run(dist.shard_columns(train), valid)
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
    objective: Objective
    hooks: tuple[Hook, ...]
    eval_bptt: int
    params: dict[str, Tensor] = field(default_factory=dict)  # by name, for hooks (built once, not per step)

    def run(self, columns: Tensor, valid: Tensor | None) -> None:
        schedule, state = self.schedule, self.state
        total = window_count(columns, schedule.bptt)
        with _StopSignals() as stop:
            while state.epoch <= schedule.epochs:
                self.runner.train()
                self.objective.reset()
                for group in self.optimizer.param_groups:
                    group["lr"] = state.lr
                started, tokens, loss_sum, done = time.perf_counter(), 0, 0.0, 0
                for index, inputs, targets in _windows(columns, schedule.bptt, state.window):
                    loss = self.step(inputs, targets)
                    state.step, state.window = state.step + 1, index + 1
                    tokens, loss_sum, done = tokens + targets.numel() * self.dist.world_size, loss_sum + loss, done + 1
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
                self.end_epoch(valid, loss_sum / max(done, 1), time.perf_counter() - started)
                if schedule.max_steps and state.step >= schedule.max_steps:
                    break

    def step(self, inputs: Tensor, targets: Tensor) -> float:
        """One window: forward, the objective, backward, hooks around clip and optimizer step; the loss."""
        device = self.dist.device
        inputs, targets = inputs.to(device), targets.to(device)
        hidden = detach_hidden(self.state.hidden) if self.state.hidden is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        outputs, self.state.hidden = self.runner(inputs, hidden)
        loss = self.objective.loss(inputs, outputs, targets)
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
        return value

    def emit(self, event: Event) -> None:
        for hook in self.hooks:
            hook.annotate(self, event)
        for hook in self.hooks:
            hook.on_event(event)

    def log_step(self, loss: float, tokens_per_s: float, total: int) -> None:
        state = self.state
        self.emit({"event": "step", "epoch": state.epoch, "step": state.step, "window": state.window,
                   "windows": total, "loss": loss, "ppl": math.exp(min(loss, 700)), "lr": state.lr,
                   "tokens_per_s": tokens_per_s})

    def end_epoch(self, valid: Tensor | None, train_loss: float, seconds: float) -> None:
        """Validation, the epoch event, the lr decay, and a checkpoint at the start of the next epoch."""
        state, schedule = self.state, self.schedule
        event: Event = {"event": "epoch", "epoch": state.epoch, "step": state.step, "lr": state.lr,
                        "train_loss": train_loss, "seconds": seconds}
        if valid is not None:
            result = perplexity(self.inner, valid, self.eval_bptt, device=self.dist.device)
            event["valid_ppl"] = result.perplexity
            improved = result.perplexity < state.best_valid
            state.best_valid = min(state.best_valid, result.perplexity)
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
