"""Taylor importance (Molchanov et al. 2019) from the one group description: (Σ gradient x weight over a unit's
group)², checked against a sum written out position by position, and used by one-shot on a real stage's loss."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_budget import _budget_run

import isscompress
from isscompress.architectures.stack import LayerSpec, ModelSpec, group_sets
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.core.importance import taylor_scores, unit_sums


def _positions(group_set, shapes) -> set[tuple[str, tuple[int, ...]]]:
    """Every element of every unit's group, as (key, index), by walking the members — the shared diagonal once."""
    owned = {}
    for member in group_set.members:
        shape = shapes[member.key]
        for start in member.starts:
            for unit in range(group_set.size):
                ranges = [range(n) if axis != member.axis else [start + unit] for axis, n in enumerate(shape)]
                for index in itertools.product(*ranges):
                    owned.setdefault(unit, set()).add((member.key, index))
    return owned


@pytest.mark.parametrize("cell, bidirectional, tied", [("LSTM", False, False), ("GRU", True, False),
                                                       ("LSTM", False, True)])
def test_taylor_scores_are_the_squared_sum_of_gradient_times_weight_over_each_group(cell, bidirectional, tied) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(cell, (LayerSpec(3, 4), LayerSpec(4 * (2 if bidirectional else 1), 3)), bidirectional,
                     vocab_size=5, tied=tied)
    model = RecurrentModel(spec)
    params = dict(model.named_parameters())
    for value in params.values():
        value.grad = torch.randn_like(value)
    sets = group_sets(spec)
    scores = taylor_scores(params, sets)
    shapes = {key: tuple(value.shape) for key, value in params.items()}
    for gs in sets:
        owned = _positions(gs, shapes)
        by_hand = torch.tensor([sum(float(params[k].grad[i] * params[k][i]) for k, i in owned[u]) ** 2
                                for u in range(gs.size)])
        torch.testing.assert_close(scores[gs.name], by_hand.float(), rtol=1e-4, atol=1e-6)
        ones = {key: torch.ones(shape) for key, shape in shapes.items()}  # unit_sums of ones: the group's size
        assert unit_sums(ones, gs).tolist() == [float(len(owned[u])) for u in range(gs.size)]


def test_one_shot_by_taylor_importance_meets_its_target_and_leaves_the_run_reproducible(tmp_path) -> None:
    checkpoint, recipe = _budget_run(tmp_path, "")
    recipe.write_text(recipe.read_text().replace("  lambda: 1e-05\n  method: proximal\n",
                                                 "  method: one-shot\n  importance: taylor\n  importance_batches: 3\n"))
    first = isscompress.finetune(checkpoint, recipe)
    again = isscompress.finetune(checkpoint, recipe)
    assert first.widths == again.widths and all(torch.equal(first.checkpoint.state[k], again.checkpoint.state[k])
                                                for k in first.checkpoint.state)
    by_norm = isscompress.finetune(checkpoint, _rewritten(recipe, "importance: taylor", "importance: norm"))
    full = sum(checkpoint.spec.macs_per_token().values())
    for result in (first, by_norm):
        small = isscompress.shrink(result.checkpoint, threshold=1e-4).checkpoint
        assert sum(small.spec.macs_per_token().values()) <= 0.5 * full


def _rewritten(path, old: str, new: str):
    other = path.with_name("other.yaml")
    other.write_text(path.read_text().replace(old, new))
    return other


def _duplicated_unit_model(tmp_path):
    """A 1-layer LSTM language model whose unit 3 computes exactly what unit 0 does (the same rows in every gate
    block), read weakly (small columns), so one-shot removes it."""
    from isscompress.io.files import write_checkpoint
    from isscompress.io.metadata import Metadata

    torch.manual_seed(0)
    words = ["a", "b", "c", "<unk>", "<eos>"]
    spec = ModelSpec("LSTM", (LayerSpec(4, 4),), vocab_size=len(words))
    state = RecurrentModel(spec).canonical_state()
    with torch.no_grad():
        for key in ("layers.0.weight_ih_l0", "layers.0.weight_hh_l0", "layers.0.bias_ih_l0", "layers.0.bias_hh_l0"):
            for gate in range(4):
                state[key][gate * 4 + 3] = state[key][gate * 4 + 0]
        state["layers.0.weight_hh_l0"][:, 3] *= 0.01
        state["decoder.weight"][:, 3] *= 0.01
    path = tmp_path / "dup.safetensors"
    write_checkpoint(path, state, Metadata(family="isscompress", spec=spec.to_dict(), vocabulary=tuple(words)))
    text = tmp_path / "text.txt"
    text.write_text(" a b c \n b a \n" * 50)
    return isscompress.load_checkpoint(path), text


@pytest.mark.parametrize("reconstruct", [True, False])
def test_reconstruction_removes_a_duplicated_unit_exactly(tmp_path, reconstruct) -> None:
    checkpoint, text = _duplicated_unit_model(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{train: {text}}}\nfinetune: {{epochs: 1, max_steps: 1, lr: 1.0e-12, optimizer: sgd, "
                      f"batch_size: 4, bptt: 5}}\niss: {{method: one-shot, target_widths: {{layer0: 3}}, "
                      f"reconstruct: {str(reconstruct).lower()}, reconstruct_batches: 2}}\n")
    result = isscompress.finetune(checkpoint, recipe)
    assert result.widths["layer0"] == 3 and float(result.checkpoint.state["layers.0.weight_ih_l0"][3].abs().sum()) == 0
    tokens = torch.randint(0, 5, (9, 2), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, _ = checkpoint.model()(tokens)
        after, _ = result.checkpoint.model()(tokens)
    gap = float((before - after).abs().max())
    assert (gap < 1e-6) if reconstruct else (gap > 1e-4)  # without it, the unit's share of every reader is lost


@pytest.mark.parametrize("cell, bidirectional, proj, tied", [("LSTM", False, 0, False), ("GRU", True, 0, False),
                                                             ("LSTM", True, 2, False), ("LSTM", False, 0, True)])
def test_shrunk_group_sets_are_the_group_sets_of_the_shrunk_model(cell, bidirectional, proj, tied) -> None:
    """Two derivations agree: the sets moved by the union rule, and the sets the shrunk architecture declares."""
    from isscompress.architectures.stack import shrunk_spec
    from isscompress.core.surgery import shrunk_group_sets

    directions = 2 if bidirectional else 1
    out = proj or 5
    spec = ModelSpec(cell, (LayerSpec(4, 5, proj), LayerSpec(out * directions, 4 if tied else 5)), bidirectional,
                     vocab_size=7, tied=tied)
    sets = group_sets(spec)
    generator = torch.Generator().manual_seed(3)
    kept = {}
    for gs in sets:  # directions of one layer keep one width; a projection stays narrower than its cells
        count = {"layer0": 3, "layer0.proj": 1, "layer1": 2, "embedding": 3}.get(gs.width_key, 2)
        kept[gs.name] = torch.randperm(gs.size, generator=generator)[:count].sort().values
    small = shrunk_spec(spec, {name: len(indices) for name, indices in kept.items()})
    expected = {gs.name: (gs.size, set(gs.members)) for gs in group_sets(small)}
    assert {gs.name: (gs.size, set(gs.members)) for gs in shrunk_group_sets(sets, kept)} == expected
