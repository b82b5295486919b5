"""Perplexity the way word_language_model's main.py measures it: eval mode, hidden state carried
across bptt windows, mean cross-entropy over every predicted token."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import bptt_windows, window_count
from ..tensors import detach_hidden


@dataclass(frozen=True)
class Perplexity:
    loss: float  # mean cross-entropy per token, in nats
    perplexity: float
    tokens: int
    seconds: float
    level: str = "word"  # what a token is: "word" or "char"
    vocabulary: str | None = None  # where the vocabulary came from (stored, a file, or rebuilt from which texts)

    @property
    def bits_per_token(self) -> float:
        """Cross-entropy in base 2: bits per character for a character-level model."""
        return self.loss / math.log(2)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_second": self.tokens_per_second, "bits_per_token": self.bits_per_token}


@torch.inference_mode()
def perplexity(
    model: nn.Module,
    batched: Tensor,
    bptt: int,
    *,
    device: torch.device | str = "cpu",
    on_window: Callable[[int, int], None] | None = None,
    level: str = "word",
) -> Perplexity:
    """Perplexity of ``model`` on ``[steps, batch]`` token ids; ``on_window(done, total)`` reports progress."""
    was_training = model.training
    model.eval()
    total_loss, total_tokens, hidden = 0.0, 0, None
    windows = window_count(batched, bptt)
    start = time.perf_counter()
    for done, (inputs, targets) in enumerate(bptt_windows(batched, bptt), 1):
        logits, hidden = model(inputs.to(device), hidden)
        hidden = detach_hidden(hidden)
        total_loss += float(nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1).to(device), reduction="sum"))
        total_tokens += targets.numel()
        if on_window is not None:
            on_window(done, windows)
    model.train(was_training)
    loss = total_loss / total_tokens
    return Perplexity(loss, math.exp(min(loss, 700.0)), total_tokens, time.perf_counter() - start, level)
