"""One plain training loop in the shape of word_language_model's ``train()``, with ISS.

Truncated BPTT with the hidden state carried and detached between windows, gradient
clipping, SGD or Adam, per-epoch lr decay. ISS adds the group-Lasso sub-gradient before
clipping (as if the penalty were in the loss) or a proximal step after the optimizer step.
Distributed data parallel runs on PyTorch's own engine: under ``torchrun`` every rank takes
its share of the batch columns and DDP averages the gradients, so the update equals the
single-process one.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..data import bptt_windows, window_count
from .distributed import Distributed
from ..errors import Diverged, Interrupted
from ..measure.perplexity import perplexity
from ..core.groups import GroupSet
from ..architectures.stack_module import RecurrentModel, detach_hidden
from ..recipe import IssSection, Schedule
from ..core.regularizer import (
    Lambdas, add_subgradient, group_norms, lambdas_for, penalty, proximal_step, regularized_keys, reweighted,
    zero_dead_groups, zero_small_weights,
)


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


Event = dict[str, Any]


def _optimizer(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    if schedule.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=schedule.lr)
    return torch.optim.SGD(model.parameters(), lr=schedule.lr)


@dataclass
class _Regularizer:
    """ISS for one run: the group sets, lambda per set, and what to do around each step."""

    sets: tuple[GroupSet, ...]
    iss: IssSection
    lambdas: dict[str, float]
    keys: set[str]
    dead: dict[str, Tensor] | None = None  # proximal + freeze_dead: units already at exactly zero
    current: Lambdas | None = None  # the per-group lambdas of the last step (reweighted ones differ per unit)
    alive_threshold: float = 0.0  # a unit whose group norm is at most this counts as removed (shrink.threshold)

    @classmethod
    def create(cls, sets: tuple[GroupSet, ...], iss: IssSection, params: dict[str, Tensor],
               alive_threshold: float = 0.0) -> "_Regularizer":
        # Groups already exactly zero count as dead from the start (the same on a fresh and a resumed run).
        dead = {name: norm == 0 for name, norm in group_norms(params, sets).items()}
        return cls(sets, iss, lambdas_for(sets, iss.lambda_, iss.layer_multipliers), regularized_keys(sets), dead,
                   alive_threshold=alive_threshold)

    def before_clip(self, params: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """subgradient: one norm pass, then the sub-gradient into .grad (so clipping sees it)."""
        if self.iss.method != "subgradient":
            return None
        norms = group_norms(params, self.sets)
        add_subgradient(params, self.sets, self._lambdas(norms), norms)
        return norms

    def _lambdas(self, norms: dict[str, Tensor], lr: float | None = None) -> Lambdas:
        """This step's lambdas: reweighted by the norms, and 0 for a set already at its target width.

        With ``lr`` (the proximal step) a set may lose at most its units above target in one step:
        the strongest of the units that would reach zero are spared this step."""
        current = dict(reweighted(self.lambdas, norms, self.iss.reweight))
        for name, target in self.iss.target_widths.items():
            norm = norms[name]
            alive = norm > self.alive_threshold
            spare = int(alive.sum()) - target
            if spare <= 0:
                current[name] = 0.0
                continue
            if lr is None:
                continue
            lam = torch.as_tensor(current[name], dtype=norm.dtype, device=norm.device).expand_as(norm).clone()
            dying = alive & (norm <= lr * lam)
            excess = int(dying.sum()) - spare
            if excess > 0:
                lam[torch.where(dying, norm, -1.0).topk(excess).indices] = 0.0
                current[name] = lam
        self.current = current
        return current

    def after_step(self, params: dict[str, Tensor], norms: dict[str, Tensor] | None, lr: float) -> dict[str, Tensor]:
        """Zeros after the optimizer step; returns the norms to log (one norm pass per step in all)."""
        if self.iss.method == "proximal":
            norms = group_norms(params, self.sets)
            factors = proximal_step(params, self.sets, self._lambdas(norms, lr), lr, norms,
                                    frozen=self.dead if self.iss.freeze_dead else None)
            self.dead = {name: factor == 0 for name, factor in factors.items()}
            return {name: norms[name] * factors[name] for name in norms}
        if self.iss.freeze_dead:
            zero_dead_groups(params, self.sets, norms)
        if self.iss.zero_threshold > 0:
            zero_small_weights(params, self.keys, self.iss.zero_threshold)
        return norms


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
    model: RecurrentModel,
    train: Tensor,
    valid: Tensor | None,
    schedule: Schedule,
    *,
    group_sets: tuple[GroupSet, ...] = (),
    iss: IssSection | None = None,
    alive_threshold: float = 0.0,
    dist: Distributed | None = None,
    state: TrainState | None = None,
    on_event: Callable[[Event], None] = lambda event: None,
    save: Callable[[RecurrentModel, TrainState], None] = lambda model, state: None,
    eval_bptt: int = 35,
) -> TrainState:
    """Train ``model`` on ``train`` (``[steps, batch]`` ids); returns the final TrainState.

    ``save`` is called every ``schedule.save_every`` steps, at each epoch end and on
    SIGINT/SIGTERM (then :class:`Interrupted` is raised).
    """
    dist = dist or Distributed.single()
    inner = model.to(dist.device)
    loop = _Loop(inner, dist.wrap(inner), _optimizer(inner, schedule), schedule, dist,
                 state or TrainState(lr=schedule.lr), on_event, save, alive_threshold, eval_bptt)
    if loop.state.optimizer:
        loop.optimizer.load_state_dict(loop.state.optimizer)
    if loop.state.rng is not None:
        torch.set_rng_state(loop.state.rng)
    else:
        torch.manual_seed(schedule.seed)
    loop.params = dict(inner.named_parameters())
    loop.regularizer = _Regularizer.create(group_sets, iss, loop.params, alive_threshold) if iss is not None else None
    loop.run(dist.shard_columns(train), valid)
    return loop.state


@dataclass
class _Loop:
    """The pieces of one training run, so that each part of an epoch is its own short method."""

    inner: RecurrentModel
    runner: nn.Module  # ``inner``, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    dist: Distributed
    state: TrainState
    on_event: Callable[[Event], None]
    save: Callable[[RecurrentModel, TrainState], None]
    alive_threshold: float
    eval_bptt: int
    regularizer: _Regularizer | None = None
    params: dict[str, Tensor] = field(default_factory=dict)  # by name, for the regularizer (built once, not per step)
    criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)

    def run(self, columns: Tensor, valid: Tensor | None) -> None:
        schedule, state = self.schedule, self.state
        total = window_count(columns, schedule.bptt)
        with _StopSignals() as stop:
            while state.epoch <= schedule.epochs:
                self.runner.train()
                for group in self.optimizer.param_groups:
                    group["lr"] = state.lr
                started, tokens, loss_sum, done = time.perf_counter(), 0, 0.0, 0
                for index, inputs, targets in _windows(columns, schedule.bptt, state.window):
                    loss, norms = self.step(inputs, targets)
                    state.step, state.window = state.step + 1, index + 1
                    tokens, loss_sum, done = tokens + targets.numel() * self.dist.world_size, loss_sum + loss, done + 1
                    if state.step % schedule.log_every == 0 or state.window == total:
                        self.log_step(loss_sum / done, tokens / max(time.perf_counter() - started, 1e-9), norms,
                                      total)
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

    def step(self, inputs: Tensor, targets: Tensor) -> tuple[float, dict[str, Tensor] | None]:
        """One window: forward, backward, ISS around clip and optimizer step; the loss and the group norms."""
        device, params = self.dist.device, self.params
        inputs, targets = inputs.to(device), targets.to(device)
        hidden = detach_hidden(self.state.hidden) if self.state.hidden is not None else None
        self.optimizer.zero_grad(set_to_none=True)
        logits, self.state.hidden = self.runner(inputs, hidden)
        loss = self.criterion(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        norms = self.regularizer.before_clip(params) if self.regularizer else None
        if self.schedule.clip:
            nn.utils.clip_grad_norm_(self.inner.parameters(), self.schedule.clip)
        self.optimizer.step()
        if self.regularizer:
            norms = self.regularizer.after_step(params, norms, self.state.lr)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise Diverged(
                f"The training loss became {value} (NaN or Inf) at step {self.state.step + 1}; the last saved "
                "checkpoint is kept.",
                "Lower the learning rate (finetune.lr), the ISS strength (iss.lambda) or set finetune.clip.",
            )
        return value, norms

    def log_step(self, loss: float, tokens_per_s: float, norms: dict[str, Tensor] | None, total: int) -> None:
        state = self.state
        event: Event = {"event": "step", "epoch": state.epoch, "step": state.step, "window": state.window,
                        "windows": total, "loss": loss, "ppl": math.exp(min(loss, 700)), "lr": state.lr,
                        "tokens_per_s": tokens_per_s}
        if self.regularizer and norms is not None:
            event["penalty"] = penalty(norms, self.regularizer.current or self.regularizer.lambdas)
            event["alive"] = self.alive(norms)
        self.on_event(event)

    def alive(self, norms: dict[str, Tensor]) -> dict[str, int]:
        return {name: int((values > self.alive_threshold).sum()) for name, values in norms.items()}

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
        if self.regularizer:
            event["alive"] = self.alive(group_norms(self.params, self.regularizer.sets))
        self.on_event(event)
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
            self.save(self.inner, self.state)
