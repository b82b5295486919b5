"""Recurrent highway networks: the layer computes Zilly et al.'s equations, and every verb works on an RHN LM."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.layers.rhn import RHNLayer
from conftest import EXCERPT

runner = CliRunner()


def _reference(layer: RHNLayer, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The equations written out, one micro-layer at a time (coupled carry gate C = 1 - T)."""
    H = layer.hidden_size
    outputs = []
    for x_t in x:
        for d in range(layer.depth):
            R, b = getattr(layer, f"weight_hh{d}_l0"), getattr(layer, f"bias_hh{d}_l0")
            pre_h = s @ R[:H].T + b[:H] + (x_t @ layer.weight_ih_l0[:H].T if d == 0 else 0)
            pre_t = s @ R[H:].T + b[H:] + (x_t @ layer.weight_ih_l0[H:].T if d == 0 else 0)
            h, t = torch.tanh(pre_h), torch.sigmoid(pre_t)
            s = h * t + s * (1 - t)
        outputs.append(s)
    return torch.stack(outputs), s


@pytest.mark.parametrize("depth", [1, 3])
def test_layer_computes_the_highway_equations(depth) -> None:
    torch.manual_seed(depth)
    layer = RHNLayer(4, 5, depth).double().eval()
    x, s0 = torch.randn(7, 3, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    got, last = layer(x, s0.unsqueeze(0))
    want, want_last = _reference(layer, x, s0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(last[0], want_last, rtol=0, atol=1e-12)
    assert sorted(name for name, _ in layer.named_parameters()) == sorted(
        ["weight_ih_l0"] + [f"{p}{d}_l0" for d in range(depth) for p in ("weight_hh", "bias_hh")])


def test_state_dropout_is_one_mask_per_window_and_off_in_eval() -> None:
    torch.manual_seed(0)
    layer = RHNLayer(3, 64, 2, state_dropout=0.5)
    x = torch.randn(5, 2, 3)
    layer.train()
    first, second = layer(x)[0], layer(x)[0]
    assert not torch.equal(first, second)  # a new mask per call
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0])


def test_variational_dropout_keeps_one_mask_over_time() -> None:
    from isscompress.architectures.stack_module import LockedDropout

    torch.manual_seed(0)
    drop = LockedDropout(0.5).train()
    out = drop(torch.ones(6, 4, 32))
    assert torch.equal(out, out[:1].expand_as(out))  # the same mask at every step
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(6, 4, 32)), torch.ones(6, 4, 32))


def test_train_finetune_shrink_eval_report_export_on_an_rhn(tmp_path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
data: {{train: {EXCERPT / 'train.txt'}, valid: {EXCERPT / 'valid.txt'}, test: {EXCERPT / 'test.txt'},
       vocab: corpus, max_train_tokens: 2000, max_eval_tokens: 1000}}
finetune: {{epochs: 1, lr: 5.0, batch_size: 10, bptt: 20, log_every: 10, dropout: 0.2, variational_dropout: true}}
iss: {{lambda: 0.5, method: proximal, reweight: 1.0, target_widths: {{layer0: 10}}}}
recover: {{epochs: 1, lr: 2.0, batch_size: 10, bptt: 20}}
""")
    base = tmp_path / "rhn.safetensors"
    result = runner.invoke(app, ["train", "-r", str(recipe), "-o", str(base), "--cell", "RHN", "--depth", "3",
                                 "-w", "16", "-e", "16", "--tied"])
    assert result.exit_code == 0, result.output
    inspected = json.loads(runner.invoke(app, ["inspect", str(base), "--json"]).stdout)
    assert inspected["model"]["cell"] == "RHN"
    assert [(layer["width"], layer["depth"]) for layer in inspected["model"]["layers"]] == [(16, 3)]
    shown = " ".join(runner.invoke(app, ["inspect", str(base)]).stdout.split())
    assert "depth" in shown and "[h; t] = R s + b" in shown  # the equations, not eaten as markup

    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(base), "-r", str(recipe), "-o", str(out), "--repeats", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [layer["width_after"] for layer in report["layers"]] == [10] and report["mac_ratio"] > 1
    small = isscompress.load_checkpoint(out / "recovered.safetensors")
    assert small.spec.cell == "RHN" and small.spec.layers[0].depth == 3 and small.spec.widths == [10]
    # checked here, not by the shrink's own report: the fine-tuned model with the removed units zeroed computes
    # what the shrunk file computes
    tuned, shrunk = (isscompress.load_checkpoint(out / f"{name}.safetensors") for name in ("finetuned", "shrunk"))
    kept = {name: torch.tensor(indices) for name, indices in shrunk.metadata.kept.items()}
    masked = tuned.spec.build(isscompress.mask_state_dict(tuned.state, tuned.group_sets, kept)).eval()
    tokens = tuned.spec.probe_inputs(steps=9)
    with torch.no_grad():
        torch.testing.assert_close(shrunk.model().eval()(tokens)[0], masked(tokens)[0], rtol=1e-4, atol=1e-5)

    result = runner.invoke(app, ["eval", str(out / "recovered.safetensors"), "--data", str(EXCERPT / "test.txt"),
                                 "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["perplexity"] > 1
    exported = tmp_path / "rhn.pt"
    result = runner.invoke(app, ["export", str(out / "recovered.safetensors"), "-f", "torchscript", "-o", str(exported)])
    assert result.exit_code == 0, result.output  # parity checked on another sequence length than traced
    scripted = torch.jit.load(str(exported))
    tokens = torch.randint(0, small.spec.vocab_size, (11, 2))
    logits, state = scripted(tokens, torch.zeros(1, 2, 10))
    with torch.no_grad():
        want, hidden = small.model()(tokens)
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-5)


def test_depth_is_refused_for_cells_without_one(tmp_path, clean_failure) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{train: {EXCERPT / 'train.txt'}}}\n")
    clean_failure(runner.invoke(app, ["train", "-r", str(recipe), "-o", str(tmp_path / "m.safetensors"),
                                      "--cell", "LSTM", "--depth", "3", "-w", "8", "-e", "8"]),
                  "A LSTM has no recurrence depth", "Depth is for RHN")
    assert not (tmp_path / "m.safetensors").exists()
