"""A report that holds for user models: attention's multiply-adds counted per pair of positions at the example
inputs' lengths, speed timed on the factory's batches when asked, and the original's task metrics reused from an
earlier report of the same original and factory (refused, by name, for any other)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import isscompress
from isscompress.architectures.traced import TracedModel
from isscompress.cli import app
from test_anymodel_cli import ARCH, LABEL_FREE, _user_setup

runner = CliRunner()


class DotAttention(nn.Module):
    """An LSTM encoder whose every position attends to every other (scaled dot product, then the weighted sum)."""

    def __init__(self, vocab: int = 30, emb: int = 6, hidden: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, batch_first=True)
        self.out = nn.Linear(2 * hidden, 3)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))  # (B, T, d)
        scores = h @ h.transpose(1, 2) / h.shape[-1] ** 0.5  # (B, T, T): every pair of positions
        context = torch.softmax(scores, -1) @ h  # (B, T, d)
        mixed = torch.bmm(context, h.transpose(1, 2)).softmax(-1) @ context
        return self.out(torch.cat([h, mixed], -1))


@pytest.mark.parametrize("steps", [5, 10])
def test_attention_multiply_adds_are_counted_per_pair_of_positions_at_the_example_length(steps) -> None:
    torch.manual_seed(0)
    model, batch, d = DotAttention(), 2, 8
    inputs = (torch.randint(0, 30, (batch, steps)),)
    spec = TracedModel.of(model, isscompress.discover(model, inputs), inputs)
    macs = spec.macs_per_token()
    # four (B, T, T) x d products, every one of them counted: T * T * d each per sequence, per token T * d
    assert macs["attention"] == 4 * steps * d
    assert macs["recurrent"] == 4 * d * (6 + d) and macs["other"] == 3 * 2 * d
    no_attention = TracedModel.of(nn.LSTM(6, 8), isscompress.discover(nn.LSTM(6, 8), (torch.randn(5, 2, 6),)),
                                  (torch.randn(5, 2, 6),))
    assert "attention" not in no_attention.macs_per_token()


def test_every_product_function_counts_its_multiply_adds_and_a_product_with_a_weight_counts_none() -> None:
    from isscompress.anymodel.products import product_macs

    a, b, w = torch.randn(2, 3, 4), torch.randn(2, 4, 5), nn.Parameter(torch.randn(4, 5))
    never = lambda t: False  # noqa: E731
    assert product_macs("bmm", (a, b), {}, torch.bmm(a, b), never) == 2 * 3 * 5 * 4
    assert product_macs("__rmatmul__", (b, a), {}, a @ b, never) == 2 * 3 * 5 * 4
    assert product_macs("einsum", ("btd,bds->bts", a, b), {}, torch.einsum("btd,bds->bts", a, b), never) == 2 * 3 * 4 * 5
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 6, 4), torch.randn(2, 6, 7)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert product_macs("scaled_dot_product_attention", (q, k, v), {}, out, never) == 2 * 3 * 6 * (4 + 7)
    assert product_macs("matmul", (a, w), {}, a @ w, lambda t: t is w) == 0  # a layer: costed from its shape
    assert product_macs("add", (a, a), {}, a + a, never) == 0


def test_a_shrunk_attention_model_counts_its_narrower_products() -> None:
    torch.manual_seed(0)
    model, inputs = DotAttention(), (torch.randint(0, 30, (2, 5)),)
    plan = isscompress.discover(model, inputs)
    spec = TracedModel.of(model, plan, inputs)
    kept = {gs.name: torch.arange(gs.size // 2) for gs in plan.group_sets}
    assert spec.with_kept(kept).macs_per_token()["attention"] == 4 * 5 * 4  # the products' depth is the width


def _reported(tmp_path, *extra) -> dict:
    source, arch, _ = _user_setup(tmp_path, LABEL_FREE)
    arch = arch.replace(":with_batches", ":with_metric")
    result = runner.invoke(app, ["report", str(source), str(source), "--arch", arch, "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_speed_on_the_factorys_batches_times_them_and_says_so(tmp_path) -> None:
    data = _reported(tmp_path, "--repeats", "2", "--speed-on", "batches")
    (sample,) = data["speed"]
    assert sample["workload"] == "factory_batches" and sample["unit"] == "calls" and sample["calls"] == 8
    example = _reported(tmp_path, "--repeats", "2")
    assert example["speed"][0]["workload"] == "example_inputs" and example["speed"][0]["calls"] == 1
    wrong = runner.invoke(app, ["report", str(tmp_path / "t.safetensors"), str(tmp_path / "t.safetensors"), "--arch",
                                f"{tmp_path / 'arch.py'}:make", "--speed-on", "batches"])
    assert wrong.exit_code == 1 and "factory returns none" in " ".join(wrong.stderr.split())


def test_an_earlier_report_gives_the_originals_metrics_only_for_the_same_original_and_factory(tmp_path) -> None:
    first = _reported(tmp_path, "--no-speed")
    assert first["measured_on"]["original_sha256"] and first["measured_on"]["arch_sha256"]
    earlier = tmp_path / "earlier.json"
    planted = dict(first, metrics={name: [0.123, pair[1]] for name, pair in first["metrics"].items()})
    earlier.write_text(json.dumps(planted))  # a value no measurement gives: seen only if it was reused
    again = _reported(tmp_path, "--no-speed", "--reuse", str(earlier))
    assert {name: pair[0] for name, pair in again["metrics"].items()} == {"tag accuracy": 0.123}
    assert again["metrics"]["tag accuracy"][1] == first["metrics"]["tag accuracy"][1]  # the shrunk one is measured
    source, arch = tmp_path / "t.safetensors", f"{tmp_path / 'arch.py'}:with_metric"
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    from anymodel_zoo import GRUTagger

    save_file({k: v.contiguous() for k, v in GRUTagger().state_dict().items()}, other)
    refused = runner.invoke(app, ["report", str(other), str(other), "--arch", arch, "--no-speed", "--reuse",
                                  str(earlier)])
    assert refused.exit_code == 1 and "measured another original" in " ".join(refused.stderr.split())
    (tmp_path / "arch.py").write_text(ARCH + "\n# edited\n")
    changed = runner.invoke(app, ["report", str(source), str(source), "--arch", arch, "--no-speed", "--reuse",
                                  str(earlier)])
    assert changed.exit_code == 1 and "another --arch file" in " ".join(changed.stderr.split())
    (tmp_path / "bad.json").write_text("{not json")
    bad = runner.invoke(app, ["report", str(source), "--arch", arch, "--no-speed", "--reuse", str(tmp_path / "bad.json")])
    assert bad.exit_code == 1 and "bad.json" in bad.stderr and "Traceback" not in bad.output


def test_the_user_model_options_say_by_name_where_they_do_not_apply(tmp_path) -> None:
    from test_bad_input_matrix import make_world

    world = make_world(tmp_path)
    model = str(world["model"])
    timed = runner.invoke(app, ["report", model, model, "--speed-on", "batches", "--repeats", "1"])
    assert timed.exit_code == 1 and "is a language-model stack, timed on tokens" in " ".join(timed.stderr.split())
    earlier = tmp_path / "earlier.json"
    earlier.write_text(runner.invoke(app, ["report", model, "--json", "--no-speed"]).stdout)
    reused = runner.invoke(app, ["report", model, "--no-speed", "--reuse", str(earlier)])
    assert reused.exit_code == 1 and "has none to reuse" in " ".join(reused.stderr.split())
