"""Errors a user can act on: every one says where, what went wrong, and what to do."""

from __future__ import annotations


class IsscompressError(Exception):
    """Base error. ``str(err)`` is one paragraph: the problem, then the hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class CheckpointError(IsscompressError):
    """A checkpoint file cannot be read, recognised, or written."""


class ShapeError(CheckpointError):
    """Tensors of a checkpoint disagree with each other."""


class RecipeError(IsscompressError):
    """A recipe file is invalid."""


class DataError(IsscompressError):
    """A text corpus or vocabulary cannot be used."""


class ShrinkError(IsscompressError):
    """Shrinking would produce an invalid or wrong model."""


class Interrupted(IsscompressError):
    """SIGINT or SIGTERM arrived during training; the last state was saved."""


class Diverged(IsscompressError):
    """The training loss became NaN or Inf."""
