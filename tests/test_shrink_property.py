"""The contract: shrink(state, kept) computes exactly what mask(state, kept) computes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from isscompress.architectures.stack import (
    LayerSpec,
    ModelSpec,
    check_shapes,
    group_sets,
    shrunk_spec,
)
from isscompress.architectures.stack_module import RecurrentModel, build_model
from isscompress.core.groups import all_unit_norms
from isscompress.core.surgery import mask_state_dict, shrink_state_dict
from isscompress.core.thresholding import kept_counts, select_kept
from isscompress.errors import ShrinkError
from isscompress.layers.cells import CELLS


@st.composite
def specs(draw) -> ModelSpec:
    cell = draw(st.sampled_from(sorted(CELLS)))  # every kind of the cell table, one registered later included
    kind = CELLS[cell]
    n_layers = draw(st.integers(1, 3))
    bidirectional = kind.bidirectional and draw(st.booleans())  # RHN and mLSTM layers are unidirectional
    depth = draw(st.integers(1, 4)) if kind.deep else 1
    language_model = draw(st.booleans())
    tied = language_model and draw(st.booleans())
    widths = [draw(st.integers(2, 7)) for _ in range(n_layers)]
    projs = [0] * n_layers
    if kind.projection and draw(st.booleans()):
        projs = [draw(st.integers(1, w - 1)) for w in widths]
    directions = 2 if bidirectional else 1
    first_input = draw(st.integers(1, 6))
    if tied:
        first_input = directions * (projs[-1] or widths[-1])
    layers, input_size = [], first_input
    for width, proj in zip(widths, projs):
        layers.append(LayerSpec(input_size, width, proj, depth))
        input_size = directions * (proj or width)
    return ModelSpec(cell=cell, layers=tuple(layers), bidirectional=bidirectional,
                     vocab_size=draw(st.integers(3, 11)) if language_model else 0, tied=tied)


def _random_kept(draw, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """Kept units per group set, shape-legal: equal per direction, proj < hidden, never empty."""
    kept = {}
    for index, layer in enumerate(spec.layers):
        hidden_keep = draw(st.integers(1, layer.hidden_size))
        proj_keep = 0
        if layer.proj_size:
            proj_keep = draw(st.integers(1, layer.proj_size))
            hidden_keep = max(hidden_keep, proj_keep + 1)
        for direction in range(spec.directions):
            name = f"layer{index}" + (".reverse" if direction else "")
            perm = draw(st.permutations(range(layer.hidden_size)))
            kept[name] = torch.tensor(sorted(perm[:hidden_keep]))
            if layer.proj_size:
                perm = draw(st.permutations(range(layer.proj_size)))
                kept[f"{name}.proj"] = torch.tensor(sorted(perm[:proj_keep]))
    if spec.is_language_model and not spec.tied:  # the embedding's dimensions are one more set
        width = spec.layers[0].input_size
        kept["embedding"] = torch.tensor(sorted(draw(st.permutations(range(width)))[:draw(st.integers(1, width))]))
    return kept


def _outputs(model: RecurrentModel, inputs: torch.Tensor) -> torch.Tensor:
    """Two consecutive chunks with the hidden state carried over."""
    with torch.no_grad():
        first, hidden = model(inputs)
        second, _ = model(inputs.flip(0), hidden)
    return torch.cat([first, second])


def _output_columns(spec: ModelSpec, kept: dict[str, torch.Tensor]) -> torch.Tensor:
    """Where the kept outputs of a bare stack's last layer sit in the full-width output."""
    last = len(spec.layers) - 1
    out = spec.layers[-1].out_size
    suffix = ".proj" if spec.layers[-1].proj_size else ""
    names = [f"layer{last}{'.reverse' if d else ''}{suffix}" for d in range(spec.directions)]
    return torch.cat([kept[name] + d * out for d, name in enumerate(names)])


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_shrunk_model_equals_masked_model(data) -> None:
    spec = data.draw(specs())
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    state = RecurrentModel(spec).double().canonical_state()
    sets = group_sets(spec)
    kept = _random_kept(data.draw, spec)

    masked = build_model(spec, mask_state_dict(state, sets, kept))
    small_spec = shrunk_spec(spec, kept_counts(kept))
    shrunk_state = shrink_state_dict(state, sets, kept)
    check_shapes(shrunk_state, small_spec)
    shrunk = build_model(small_spec, shrunk_state)

    inputs = spec.probe_inputs(dtype=torch.float64)
    expected = _outputs(masked, inputs)
    if not spec.is_language_model:
        expected = expected[..., _output_columns(spec, kept)]
    got = _outputs(shrunk, inputs)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_zeroed_units_and_only_they_are_dropped(data) -> None:
    spec = data.draw(specs())
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    state = RecurrentModel(spec).double().canonical_state()
    sets = group_sets(spec)
    wanted = _random_kept(data.draw, spec)  # shape-legal already: nothing needs topping up
    state = mask_state_dict(state, sets, wanted)
    kept = select_kept(all_unit_norms(state, sets), sets, threshold=0.0)
    assert {n: v.tolist() for n, v in kept.items()} == {n: v.tolist() for n, v in wanted.items()}
    small_spec = shrunk_spec(spec, kept_counts(kept))
    build_model(small_spec, shrink_state_dict(state, sets, kept))  # nn.LSTM accepts the widths


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_illegal_widths_are_topped_up_with_the_strongest_dead_units(data) -> None:
    """Brute force: every set keeps its k strongest units, k the largest alive count among the sets
    that must share its width, and a cell set at least one more than its projection keeps."""
    spec = data.draw(specs())
    sets = group_sets(spec)
    norms = {gs.name: torch.tensor(data.draw(st.lists(st.integers(1, 12), min_size=gs.size, max_size=gs.size,
                                                      unique=True)), dtype=torch.float64)
             for gs in sets}  # distinct within a set: "strongest" is unambiguous
    threshold = float(data.draw(st.integers(0, 12)))
    alive = {gs.name: int((norms[gs.name] > threshold).sum()) for gs in sets}
    width = {}
    for gs in sets:
        width[gs.width_key] = max(width.get(gs.width_key, 0), alive[gs.name])
    if 0 in width.values():
        with pytest.raises(ShrinkError, match="every unit"):
            select_kept(norms, sets, threshold)
        return
    for gs in sets:
        if gs.narrower_than:
            width[gs.narrower_than] = max(width[gs.narrower_than], width[gs.width_key] + 1)
    expected = {gs.name: sorted(torch.topk(norms[gs.name], width[gs.width_key]).indices.tolist()) for gs in sets}
    kept = select_kept(norms, sets, threshold)
    assert {n: v.tolist() for n, v in kept.items()} == expected
