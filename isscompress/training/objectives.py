"""What training minimises. The loop asks an objective for one window's loss and nothing else, so a
distillation loss or a user's own is one new object, not an edit of the loop."""

from __future__ import annotations

from typing import Protocol

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
