"""What one training run iterates over and minimises: the loop asks a task for its batches and each batch's loss,
so a language model's truncated-BPTT windows and a user model's unlabelled batches run through the one loop (its
NaN guard, resume, signals, devices, DDP and hooks), not through two.

- :class:`LanguageModelTask`: windows of a token stream, the hidden state carried between them (in the loop's
  ``TrainState``, so ``--resume`` continues it), an objective (cross-entropy or distillation), perplexity as the
  validation.
- :class:`LabelFreeTask`: a user model's input batches, pulled towards a frozen teacher's outputs (the original
  model), for models whose labels or training code are not at hand.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from ..data import bptt_windows, window_count
from ..tensors import detach_hidden
from ..errors import CheckpointError
from ..measure.perplexity import perplexity
from .objectives import Objective, distillation_divergence

if TYPE_CHECKING:
    from .loop import Loop


class Task(Protocol):
    """Batches and their loss, for one training run."""

    unit: str  # what ``loss`` counts ("tokens", "batches"): the progress line's rate

    def count(self) -> int | None:
        """Batches per epoch (None when the data cannot say before it is read)."""

    def batches(self, skip: int) -> Iterator[tuple[int, Any]]:
        """(index, batch) of this rank's share of an epoch, the first ``skip`` left out (a resumed run)."""

    def loss(self, loop: "Loop", batch: Any) -> tuple[Tensor, int]:
        """The batch's training loss, and how many tokens (or examples) it covered."""

    def start_epoch(self, loop: "Loop") -> None:
        """An epoch begins (state carried across batches starts again)."""

    def validate(self, loop: "Loop") -> dict[str, float]:
        """Fields for the epoch event (``valid_ppl``); empty when there is nothing to validate on."""

    def step_fields(self, loss: float) -> dict[str, float]:
        """Fields a step event adds to the loss (a language model's perplexity)."""


class LanguageModelTask:
    """Truncated BPTT over ``[steps, batch]`` token ids, word_language_model's ``train()``."""

    unit = "tokens"

    def __init__(self, columns: Tensor, valid: Tensor | None, bptt: int, objective: Objective, eval_bptt: int) -> None:
        self.columns, self.valid, self.bptt = columns, valid, bptt
        self.objective, self.eval_bptt = objective, eval_bptt
        self.hidden_checked = False

    def count(self) -> int:
        return window_count(self.columns, self.bptt)

    def batches(self, skip: int) -> Iterator[tuple[int, Any]]:
        for index, window in enumerate(bptt_windows(self.columns, self.bptt)):
            if index >= skip:
                yield index, window

    def loss(self, loop: "Loop", batch: Any) -> tuple[Tensor, int]:
        inputs, targets = (t.to(loop.dist.device) for t in batch)
        hidden = detach_hidden(loop.state.hidden) if loop.state.hidden is not None else None
        if hidden is not None and loop.state.window and not self.hidden_checked:
            self._check_resumed_hidden(loop, inputs, hidden)
        outputs, loop.state.hidden = loop.runner(inputs, hidden)
        return self.objective.loss(inputs, outputs, targets), targets.numel()

    def _check_resumed_hidden(self, loop: "Loop", inputs: Tensor, hidden: Any) -> None:
        """A hidden state read back from a resume file must have the shapes the model makes: one token's run says."""
        training = loop.inner.training
        with torch.no_grad():  # in eval mode: dropout would draw random numbers and change the resumed run
            _, fresh = loop.inner.eval()(inputs[:1], None)
        loop.inner.train(training)
        shapes = [[tuple(t.shape) for t in (h if isinstance(h, tuple) else (h,))] for h in hidden]
        if shapes != [[tuple(t.shape) for t in (h if isinstance(h, tuple) else (h,))] for h in fresh]:
            raise CheckpointError(f"The training state to resume from carries a hidden state of shapes {shapes}, "
                                  "which this model and batch size do not make.", "Start again without --resume.")
        self.hidden_checked = True

    def start_epoch(self, loop: "Loop") -> None:
        self.objective.reset()

    def validate(self, loop: "Loop") -> dict[str, float]:
        if self.valid is None:
            return {}
        return {"valid_ppl": perplexity(loop.inner, self.valid, self.eval_bptt, device=loop.dist.device).perplexity}

    def step_fields(self, loss: float) -> dict[str, float]:
        return {"ppl": math.exp(min(loss, 700))}


def floats(outputs: Any) -> list[Tensor]:
    """Every floating-point tensor among a model's outputs (tuples, dicts, packed sequences flattened)."""
    return [t for t in tree_flatten(outputs)[0] if isinstance(t, Tensor) and t.is_floating_point()]


def to_device(value: Any, device: torch.device) -> Any:
    return tree_map(lambda v: v.to(device) if isinstance(v, Tensor) else v, value)


def divergence(outputs: list[Tensor], targets: list[Tensor], temperature: float = 1.0, kind: str = "kl") -> Tensor:
    """The distillation loss summed over outputs of equal shape (a shrunk model's outputs made of hidden features
    are narrower and left out: its answers are what is compared)."""
    return sum((distillation_divergence(o, t, temperature, kind) for o, t in zip(outputs, targets)
                if o.shape == t.shape), torch.zeros(()))


def output_gap(student: nn.Module, teacher: nn.Module, inputs: tuple, temperature: float = 1.0,
               kind: str = "kl") -> Tensor:
    """The distillation loss of one batch: summed over the model's floating outputs."""
    with torch.no_grad():
        targets = floats(teacher(*inputs))
    return divergence(floats(student(*inputs)), targets, temperature, kind)


Batches = Iterable[Any] | Callable[[], Iterable[Any]]


class LabelFreeTask:
    """A user model's input batches; the loss is how far its outputs are from a frozen teacher's — and, with a
    ``task_loss(outputs, batch)`` from the user's factory and ``alpha`` below 1, that share of the task's own loss
    (labels the factory derives from the batch: the next phoneme of a teacher-forced pronunciation, a tag).

    ``batches`` is a list of input tuples or a function giving a fresh iterable each epoch; under DDP each rank
    takes every ``world_size``-th batch (a list is cut to a multiple of the world size, so ranks step together)."""

    unit = "batches"

    def __init__(self, batches: Batches, teacher: nn.Module, temperature: float = 1.0, kind: str = "kl",
                 alpha: float = 1.0, task_loss: Callable[[Any, tuple], Tensor] | None = None) -> None:
        self.source, self.teacher = batches, teacher.eval().requires_grad_(False)
        self.temperature, self.kind = temperature, kind
        self.alpha, self.task_loss = alpha, task_loss
        self.fixed: list | None = None if callable(batches) else list(batches)
        self.epoch_batches = self.fixed
        self.counted: int | None = None  # batches given by a function: counted by the first full pass

    def count(self) -> int | None:
        """Batches per epoch: a list's length, or for batches given by a function what its last full pass gave."""
        return self.counted if self.epoch_batches is None else len(self.epoch_batches)

    def start_epoch(self, loop: "Loop") -> None:
        self.teacher.to(loop.dist.device)
        world, rank = loop.dist.world_size, loop.dist.rank
        if world == 1:
            self.epoch_batches = self.fixed
            return
        every = self.fixed if self.fixed is not None else list(self.source())  # ranks must agree on the count
        self.epoch_batches = every[rank:len(every) // world * world:world]

    def batches(self, skip: int) -> Iterator[tuple[int, Any]]:
        every = self.epoch_batches if self.epoch_batches is not None else self.source()
        index = -1
        for index, batch in enumerate(every):
            if index >= skip:
                yield index, batch
        if self.epoch_batches is None:  # a whole pass: from now on progress bars know their length
            self.counted = index + 1

    def loss(self, loop: "Loop", batch: Any) -> tuple[Tensor, int]:
        inputs = to_device(batch if isinstance(batch, tuple) else (batch,), loop.dist.device)
        with torch.no_grad():
            targets = floats(self.teacher(*inputs))
        outputs = loop.runner(*inputs)
        loss = divergence(floats(outputs), targets, self.temperature, self.kind)
        if self.task_loss is not None and self.alpha < 1.0:
            loss = self.alpha * loss + (1 - self.alpha) * self.task_loss(outputs, inputs)
        return loss, 1

    def validate(self, loop: "Loop") -> dict[str, float]:
        return {}

    def step_fields(self, loss: float) -> dict[str, float]:
        return {}
