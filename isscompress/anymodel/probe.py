"""Running a user's module for a check: in float64, refusing a random forward, naming the module that fails.

A check on one run vouches for nothing when forward is random, and a shrunk model that fails inside a user's code
must say where; both belong to running the model, not to the comparison (:mod:`isscompress.core.exactness`).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import ShrinkError

DETERMINISM_SEEDS = (0, 1, 2)  # a coin-flip branch takes both ways within these three draws (0.50, 0.76, 0.61)


def double(value: Any) -> Any:
    return tree_map(lambda v: v.double() if isinstance(v, Tensor) and v.is_floating_point() else v, value)


@contextmanager
def float64_default() -> Iterator[None]:
    """Tensors the forward makes itself (``torch.zeros(...)``) are float64 too."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextmanager
def module_stack(model: nn.Module) -> Iterator[list[tuple[str, str]]]:
    """The modules a forward is inside, innermost last (after an exception: where it was raised)."""
    names = {id(m): name for name, m in model.named_modules()}
    stack: list[tuple[str, str]] = []

    def enter(module: nn.Module, args: Any) -> None:
        if id(module) in names and names[id(module)]:
            stack.append((names[id(module)], type(module).__name__))

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if id(module) in names and names[id(module)] and stack:
            stack.pop()

    handles = [nn.modules.module.register_module_forward_pre_hook(enter),
               nn.modules.module.register_module_forward_hook(leave)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _tensors(outputs: Any) -> list[Tensor | None]:
    """The forward's flattened outputs: a packed sequence as its data, anything that is no tensor as None."""
    leaves = tree_flatten(outputs)[0]
    return [leaf.data if isinstance(leaf, PackedSequence) else leaf if isinstance(leaf, Tensor) else None
            for leaf in leaves]


def _runs_alike(model: nn.Module, inputs: tuple) -> list[Tensor | None]:
    """The model's outputs, after checking that runs under different random seeds agree exactly."""
    runs = []
    for seed in DETERMINISM_SEEDS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            runs.append(_tensors(model(*inputs)))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            if a is not None and (a.shape != b.shape or not torch.equal(a, b)):
                gap = float((a - b).abs().max()) if a.shape == b.shape and a.is_floating_point() else float("inf")
                raise ShrinkError(f"The model's forward gives different outputs on runs of the same inputs in eval "
                                  f"mode (largest difference {gap:.3g}): it is random, so no check of the shrunk model "
                                  "can vouch for it.", "Make forward deterministic in eval mode (no torch.rand, random "
                                  "branches or sampling), then shrink again.")
    return runs[0]


def float64_outputs(module: nn.Module, state: Mapping[str, Tensor], batches: tuple[tuple, ...],
                    determinism: bool) -> list[Tensor | None]:
    """``module`` (a copy) with ``state`` loaded, run in float64 on every batch; the outputs of all batches in
    order. ``determinism``: first check that the forward is not random."""
    model = copy.deepcopy(module).double().eval()
    model.load_state_dict(double(dict(state)))
    outputs: list[Tensor | None] = []
    with torch.no_grad(), float64_default():
        for batch in batches:
            if determinism:
                outputs += _runs_alike(model, double(batch))
                continue
            with module_stack(model) as stack:
                try:
                    outputs += _tensors(model(*double(batch)))
                except Exception as err:
                    where = f" in module `{stack[-1][0]}` ({stack[-1][1]})" if stack else ""
                    raise ShrinkError(f"The shrunk model fails on the example inputs{where} ({type(err).__name__}: "
                                      f"{' '.join(str(err).split())[:200]}); its forward probably builds a tensor from "
                                      "a size written outside its layers (a literal, or an attribute isscompress could "
                                      "not resize).", "Read sizes from the layers (lstm.hidden_size, tensor.shape) in "
                                      "forward, then shrink again.") from err
    return outputs
