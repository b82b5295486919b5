"""Distillation from the original model: the objective against brute force, label-free use, recipes."""

from __future__ import annotations

import pytest
import torch
from conftest import _recipe

import isscompress
from isscompress.errors import RecipeError
from isscompress.training.objectives import Distillation, distillation_divergence
from isscompress.verbs.finetune import finetune


def test_kl_term_against_brute_force():
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    for temperature in (1.0, 2.5):
        p = torch.softmax(teacher / temperature, -1).reshape(-1, 7)
        q = torch.softmax(student / temperature, -1).reshape(-1, 7)
        brute = (p * (p.log() - q.log())).sum() / 12 * temperature**2
        torch.testing.assert_close(distillation_divergence(student, teacher, temperature), brute)
    torch.testing.assert_close(distillation_divergence(student, teacher, 1.0, "mse"), ((student - teacher) ** 2).mean())


def test_label_free_distillation_ignores_the_labels_and_is_zero_for_the_teacher_itself(small_lm):
    checkpoint = isscompress.load_checkpoint(small_lm)
    teacher = checkpoint.spec.build(checkpoint.state)
    student = checkpoint.spec.build(checkpoint.state)
    inputs = torch.randint(0, checkpoint.spec.vocab_size, (5, 2))
    outputs, _ = student(inputs)
    label_free = Distillation(teacher, temperature=2.0, alpha=1.0)
    one = label_free.loss(inputs, outputs, torch.zeros_like(inputs)).detach()
    label_free.reset()
    other = label_free.loss(inputs, outputs, torch.ones_like(inputs)).detach()
    assert float(one) == pytest.approx(0.0, abs=1e-6) and float(other) == pytest.approx(float(one))
    mixed = Distillation(teacher, alpha=0.25)
    expected = 0.75 * torch.nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), inputs.reshape(-1))
    torch.testing.assert_close(mixed.loss(inputs, outputs, inputs), expected)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_finetune_with_a_distill_section_matches_the_teacher_better(tmp_path, small_lm):
    """ISS with distillation stays closer to the original's outputs than ISS on the labels alone."""
    plain = finetune(small_lm, _recipe(tmp_path, lam=0.02)).checkpoint
    distill = "distill: {alpha: 1.0, temperature: 1.0}"
    distilled_run = finetune(small_lm, _recipe(tmp_path, lam=0.02, extra=distill))
    original = isscompress.load_checkpoint(small_lm)
    inputs = torch.randint(0, original.spec.vocab_size, (30, 4), generator=torch.Generator().manual_seed(1))

    def gap(checkpoint):
        with torch.no_grad():
            return float(distillation_divergence(checkpoint.spec.build(checkpoint.state)(inputs)[0],
                                                 original.spec.build(original.state)(inputs)[0], 1.0))

    assert gap(distilled_run.checkpoint) < gap(plain)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in distilled_run.events if "loss" in e)


def test_distill_recipe_errors_name_the_line(tmp_path, small_lm):
    with pytest.raises(RecipeError, match="alpha"):
        isscompress.load_recipe(_recipe(tmp_path, extra="distill: {alpha: 1.5}"))
    with pytest.raises(RecipeError, match="any-model path"):
        finetune(small_lm, _recipe(tmp_path, extra="distill: {loss: mse}"))
