"""What training minimises. The loop asks an objective for one window's loss and nothing else, so a
distillation loss or a user's own is one new object, not an edit of the loop."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Objective(Protocol):
    """One window's training loss from the model's inputs, its outputs and the targets."""

    def loss(self, inputs: Tensor, outputs: Tensor, targets: Tensor) -> Tensor: ...

    def reset(self) -> None:
        """A new pass over the data begins (state carried across windows, such as a teacher's, starts again)."""
        ...


class LanguageModelLoss:
    """Next-token cross-entropy over every position of the window (word_language_model's criterion)."""

    def __init__(self) -> None:
        self.criterion = nn.CrossEntropyLoss()

    def loss(self, inputs: Tensor, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.criterion(outputs.reshape(-1, outputs.size(-1)), targets.reshape(-1))

    def reset(self) -> None:
        pass


def distillation_divergence(student: Tensor, teacher: Tensor, temperature: float = 1.0, kind: str = "kl") -> Tensor:
    """How far the student's outputs are from the teacher's: KL of the softened distributions over the last
    axis (times T^2, Hinton et al. 2015, so gradients keep their scale), or the mean squared error."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    classes = student.size(-1)
    log_student = F.log_softmax(student.reshape(-1, classes) / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.reshape(-1, classes) / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * temperature**2


class Distillation:
    """``alpha * KL(teacher || student) + (1 - alpha) * cross-entropy``, the teacher a frozen language model.

    The teacher sees the same windows and carries its own hidden state across them (reset with each
    pass), in eval mode and without gradients; with ``alpha == 1`` the labels are not used at all."""

    def __init__(self, teacher: nn.Module, temperature: float = 1.0, alpha: float = 0.5) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.labels = LanguageModelLoss()
        self.hidden = None

    def reset(self) -> None:
        self.hidden = None

    def loss(self, inputs: Tensor, outputs: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            hidden = None if self.hidden is None else [tuple(h.detach() for h in state) if isinstance(state, tuple)
                                                       else state.detach() for state in self.hidden]
            teacher, self.hidden = self.teacher(inputs, hidden)
        loss = self.alpha * distillation_divergence(outputs, teacher, self.temperature)
        if self.alpha < 1:
            loss = loss + (1 - self.alpha) * self.labels.loss(inputs, outputs, targets)
        return loss
