"""The ISS regularizer against brute force: sub-gradient = autograd of the penalty; proximal step
= every weight times the product of its groups' factors, each group counted once."""

from __future__ import annotations

import pytest
import torch

from isscompress.architectures.stack import LayerSpec, ModelSpec, group_sets
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.core.groups import chosen_sets, unit_squared_norms
from isscompress.core.regularizer import (
    add_subgradient,
    group_norms,
    proximal_step,
    reweighted,
    zero_small_weights,
)

SPECS = [
    ModelSpec("LSTM", (LayerSpec(3, 4), LayerSpec(4, 5)), vocab_size=7),
    ModelSpec("GRU", (LayerSpec(3, 4), LayerSpec(8, 3)), bidirectional=True),
    ModelSpec("LSTM", (LayerSpec(6, 5, 3), LayerSpec(6, 4, 3)), bidirectional=True, vocab_size=7, tied=True),
]


def _state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.double().requires_grad_() for k, v in RecurrentModel(spec).canonical_state().items()}


def _group_masks(state, group_set, unit: int) -> dict[str, torch.Tensor]:
    masks = {}
    for member in group_set.members:
        mask = masks.setdefault(member.key, torch.zeros_like(state[member.key], dtype=torch.bool))
        for start in member.starts:
            mask.narrow(member.axis, start + unit, 1).fill_(True)
    return masks


@pytest.mark.parametrize("spec", SPECS)
def test_subgradient_equals_autograd_of_the_penalty(spec) -> None:
    state = _state(spec)
    sets = group_sets(spec)
    lambdas = {gs.name: 0.1 * (i + 1) for i, gs in enumerate(sets)}
    penalty = sum(lambdas[gs.name] * unit_squared_norms(state, gs).sqrt().sum() for gs in sets)
    expected = torch.autograd.grad(penalty, list(state.values()), allow_unused=True)
    for tensor in state.values():
        tensor.grad = torch.zeros_like(tensor)
    add_subgradient(state, sets, lambdas, group_norms(state, sets))
    for (key, tensor), want in zip(state.items(), expected):
        torch.testing.assert_close(tensor.grad, want if want is not None else torch.zeros_like(tensor),
                                   rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.parametrize("spec", SPECS)
def test_proximal_step_is_the_product_of_group_factors(spec) -> None:
    state = {k: v.detach().clone() for k, v in _state(spec).items()}
    sets = group_sets(spec)
    lr = 1.0
    norms = group_norms(state, sets)
    lambdas = {gs.name: float(norms[gs.name].median()) for gs in sets}  # about half the groups die
    expected = {k: v.clone() for k, v in state.items()}
    for gs in sets:
        for unit in range(gs.size):
            factor = max(0.0, 1 - lr * lambdas[gs.name] / float(norms[gs.name][unit]))
            for key, mask in _group_masks(state, gs, unit).items():
                expected[key][mask] *= factor
    factors = proximal_step(state, sets, lambdas, lr)
    for key in state:
        torch.testing.assert_close(state[key], expected[key], rtol=1e-12, atol=1e-14, msg=key)
    killed = [(gs, u) for gs in sets for u in range(gs.size) if factors[gs.name][u] == 0]
    assert killed, "lambda was chosen so that some groups die"
    for gs, unit in killed:  # a group whose factor is 0 is exactly zero
        for key, mask in _group_masks(state, gs, unit).items():
            assert torch.count_nonzero(state[key][mask]) == 0


def test_frozen_units_stay_zero_and_small_weights_are_zeroed() -> None:
    spec = SPECS[0]
    state = {k: v.detach().clone() for k, v in _state(spec).items()}
    sets = group_sets(spec)
    frozen = {gs.name: torch.zeros(gs.size, dtype=torch.bool) for gs in sets}
    frozen["layer1"][2] = True
    factors = proximal_step(state, sets, {gs.name: 1e-6 for gs in sets}, 1.0, frozen=frozen)
    assert factors["layer1"][2] == 0 and bool((factors["layer0"] > 0).all())
    assert float(group_norms(state, sets)["layer1"][2]) == 0.0
    zero_small_weights(state, {"decoder.weight"}, 0.05)
    assert float(state["decoder.weight"].abs().min()) == 0.0
    assert bool(((state["decoder.weight"] == 0) | (state["decoder.weight"].abs() >= 0.05)).all())


def test_reweighted_lambdas_favour_strong_groups_and_feed_the_proximal_step() -> None:
    spec = SPECS[0]
    state = {k: v.detach().clone() for k, v in _state(spec).items()}
    sets = chosen_sets(group_sets(spec), "recurrent")  # the layers' sets (an untied LM's embedding is one more)
    proximal_step(state, sets, {"layer0": 0.0, "layer1": 0.0}, 1.0,
                  frozen={"layer0": torch.tensor([False, True, False, False]), "layer1": torch.zeros(5).bool()})
    norms = group_norms(state, sets)
    base = {"layer0": 0.2, "layer1": 0.3}
    assert reweighted(base, norms, 0.0) is base  # exponent 0 is the paper's plain group Lasso
    weighted = reweighted(base, norms, 2.0)
    alive = norms["layer0"][[0, 2, 3]]
    expected = 0.2 * (alive.mean() / alive) ** 2
    torch.testing.assert_close(weighted["layer0"][[0, 2, 3]], expected, rtol=1e-12, atol=0)
    assert float(weighted["layer0"][1]) == 0.0  # a dead group carries no weight (and no NaN)
    order = torch.argsort(norms["layer1"])
    assert bool((weighted["layer1"][order].diff() < 0).all())  # the stronger the group, the smaller its lambda
    expected_state = {k: v.clone() for k, v in state.items()}
    for gs in sets:  # per-unit lambdas: still the product of each group's own factor
        for unit in range(gs.size):
            factor = max(0.0, 1 - float(weighted[gs.name][unit]) / max(float(norms[gs.name][unit]), 1e-12))
            for key, mask in _group_masks(state, gs, unit).items():
                expected_state[key][mask] *= factor
    proximal_step(state, sets, weighted, 1.0, norms)
    for key in state:
        torch.testing.assert_close(state[key], expected_state[key], rtol=1e-12, atol=1e-14, msg=key)


def test_lambda_far_from_its_scale_is_a_warning_with_a_suggestion() -> None:
    from isscompress.training.iss_hook import lambda_scale_warning

    norms = {"layer0": torch.tensor([2.0, 3.0, 4.0, 0.0])}  # median of the alive units: 3
    weak = lambda_scale_warning(norms, lam=1e-2, lr=1e-3, steps=1000)  # moves a norm by 0.01 in the run
    assert "can shrink a group's norm by at most 0.01" in weak and "Try lambda around 9" in weak
    assert lambda_scale_warning(norms, lam=3.0, lr=1e-3, steps=1000) is None  # 3 in the run: in range
    strong = lambda_scale_warning(norms, lam=5000.0, lr=1e-3, steps=1000)  # 5 per step
    assert "most units die in the first steps" in strong
