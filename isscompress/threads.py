"""How many threads torch's CPU kernels use: ``--threads N``, else ``ISSCOMPRESS_THREADS``, else a default
chosen for small shared machines.

On a 2-core machine with other work on it, torch's default (one thread per core) makes every parallel region wait
for a descheduled thread: a 2x200 LSTM training step went from 0.22 s (1 thread) to 0.25-0.65 s median and 3.3 s
at worst (2 threads) beside one other busy process (docs/commands.md has the measurement). One thread is never
much slower on such a machine and never collapses, so machines of up to ``SMALL_MACHINE`` CPUs default to one;
larger machines keep torch's own default.
"""

from __future__ import annotations

import os

from .errors import IsscompressError

ENVIRONMENT = "ISSCOMPRESS_THREADS"
SMALL_MACHINE = 4  # CPUs


def resolve_threads(requested: int | None = None) -> int | None:
    """The thread count to use (None: torch's own default), from the option, the environment or the machine."""
    if requested is None and os.environ.get(ENVIRONMENT, "").strip():
        text = os.environ[ENVIRONMENT].strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) < 1:
            raise IsscompressError(f"{ENVIRONMENT}={text!r} is not a positive whole number of threads.",
                                   f"Set it to e.g. 1 or 2, or unset it ({ENVIRONMENT} applies to every command).")
        requested = int(text)
    if requested is not None:
        if requested < 1:
            raise IsscompressError(f"--threads {requested} is not a positive number of threads.",
                                   "Give --threads 1 or more.")
        cpus = os.cpu_count() or 1
        if requested > cpus:  # torch allocates per-thread state up front: a huge count crashes the process
            raise IsscompressError(f"{requested:,} threads were asked for (--threads or {ENVIRONMENT}), but this "
                                   f"machine has {cpus} CPUs; more threads than CPUs only wait for each other.",
                                   f"Give at most {cpus}.")
        return requested
    return 1 if (os.cpu_count() or 1) <= SMALL_MACHINE else None


def apply_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads as :func:`resolve_threads` says; return the count in use."""
    import torch

    chosen = resolve_threads(requested)
    if chosen is not None:
        torch.set_num_threads(chosen)
    return torch.get_num_threads()
