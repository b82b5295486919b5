"""The verbs in memory (no file written unless asked), typed metadata, and what travels through them."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import _recipe
from safetensors import safe_open
from safetensors.torch import save_file

import isscompress
from isscompress.errors import CheckpointError
from isscompress.io.metadata import FORMAT_VERSION, METADATA_KEY


def _files(folder) -> set[str]:
    return {p.name for p in folder.rglob("*") if p.is_file()}


def test_verbs_chain_in_memory_and_match_the_file_path_api(tmp_path, small_lm) -> None:
    recipe = isscompress.load_recipe(_recipe(tmp_path, lam=0.03, iss_extra="target_widths: {layer0: 20}"))
    work = tmp_path / "work"
    work.mkdir()
    source = isscompress.load_checkpoint(small_lm)
    before = {k: v.clone() for k, v in source.state.items()}

    tuned = isscompress.finetune(source, recipe)
    assert tuned.checkpoint.path is None and tuned.epochs
    assert all(torch.equal(before[k], v) for k, v in source.state.items())  # the caller's model is untouched
    shrunk = isscompress.shrink(tuned.checkpoint, threshold=recipe.shrink.threshold)
    small = shrunk.checkpoint
    assert small.path is None and small.spec.widths[0] == 20 and small.spec.widths[1] < 20
    assert small.metadata.stage == "shrink" and [s["stage"] for s in small.metadata.lineage] == ["finetune", "shrink"]
    ppl = isscompress.evaluate(small, recipe.data.test, recipe=recipe).perplexity
    report = isscompress.report(source, small, data=recipe.data.test, vocab_source=recipe.data, speed=False)
    assert report.perplexity_after.perplexity == pytest.approx(ppl)
    assert report.mac_ratio > 1
    exported = isscompress.export(small, None, "torchscript")
    assert exported.output is None and exported.data[:2] == b"PK"
    assert _files(work) == set()  # nothing was written

    # The same shrink through files gives the same tensors, bit for bit.
    tuned_file = isscompress.save_checkpoint(tuned.checkpoint, work / "tuned.safetensors")
    from_file = isscompress.shrink(tuned_file.path, work / "small.safetensors", recipe.shrink.threshold)
    assert from_file.checkpoint.state.keys() == small.state.keys()
    assert all(torch.equal(from_file.checkpoint.state[k], v) for k, v in small.state.items())
    reloaded = isscompress.load_checkpoint(work / "small.safetensors")
    assert reloaded.metadata.kept == small.metadata.kept and reloaded.spec == small.spec


def test_source_metadata_travels_through_shrink_verbatim(tmp_path) -> None:
    lstm = torch.nn.LSTM(3, 5, num_layers=2)
    state = {k: v.detach().clone() for k, v in lstm.state_dict().items()}
    for key in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        state[key].view(4, 5, -1)[:, 2] = 0  # unit 2 of layer 0 is dead
    state["weight_ih_l1"][:, 2] = 0
    state["weight_hh_l0"][:, 2] = 0
    header = {"licence": "CC-BY-4.0", "vocabulary_note": "none", "gate_activation": "sigmoid"}
    source = tmp_path / "stack.safetensors"
    save_file(state, str(source), metadata=header)
    out = tmp_path / "small.safetensors"
    isscompress.shrink(source, out)
    with safe_open(str(out), "pt") as handle:
        written = handle.metadata()
    assert {k: written[k] for k in header} == header  # the file's own entries, unchanged
    assert json.loads(written[METADATA_KEY])["widths_after"]["layer0"] == 4
    again = tmp_path / "smaller.safetensors"
    isscompress.shrink(out, again)  # and once more, from our own file
    assert isscompress.load_checkpoint(again).metadata.foreign == header


def test_metadata_of_a_newer_format_is_refused_and_unknown_keys_are_kept(tmp_path) -> None:
    spec = isscompress.ModelSpec("GRU", (isscompress.LayerSpec(3, 4),))
    state = isscompress.RecurrentModel(spec).canonical_state()
    record = {"format_version": FORMAT_VERSION, "spec": spec.to_dict(), "from_the_future": {"x": 1}}
    path = tmp_path / "ours.safetensors"
    save_file(state, str(path), metadata={METADATA_KEY: json.dumps(record)})
    checkpoint = isscompress.load_checkpoint(path)
    assert checkpoint.metadata.unknown == {"from_the_future": {"x": 1}}
    out = tmp_path / "out.safetensors"
    isscompress.shrink(checkpoint, out)
    assert isscompress.load_checkpoint(out).metadata.unknown == {"from_the_future": {"x": 1}}

    newer = tmp_path / "newer.safetensors"
    save_file(state, str(newer), metadata={METADATA_KEY: json.dumps({**record, "format_version": FORMAT_VERSION + 1})})
    with pytest.raises(CheckpointError, match="newer isscompress"):
        isscompress.load_checkpoint(newer)


def test_every_cell_kind_of_the_table_builds_costs_and_exports_its_states() -> None:
    for name, cell in isscompress.CELLS.items():
        spec = isscompress.ModelSpec(name, (isscompress.LayerSpec(3, 5, 2 if cell.projection else 0),))
        model = isscompress.RecurrentModel(spec)
        hidden = model(spec.probe_inputs())[1][0]
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        layer = spec.layers[0]
        assert [s.shape[-1] for s in states] == list(cell.state_widths(layer))
        weights = sum(p.numel() for n, p in model.named_parameters() if "weight" in n)
        assert spec.macs_per_token()["recurrent"] == weights  # one multiply-add per weight per token


def test_the_vocabulary_beside_a_source_travels_into_the_shrunk_file(tmp_path) -> None:
    words = ["<unk>", "the", "cat", "sat", "<eos>"]
    spec = isscompress.ModelSpec("LSTM", (isscompress.LayerSpec(4, 6),), vocab_size=len(words))
    source_dir, out_dir = tmp_path / "model", tmp_path / "elsewhere"
    source_dir.mkdir(), out_dir.mkdir()
    state = isscompress.RecurrentModel(spec).canonical_state()
    save_file({f"rnn.{k.split('.', 2)[2]}": v for k, v in state.items() if k.startswith("layers.")}
              | {"encoder.weight": state["encoder.weight"], "decoder.weight": state["decoder.weight"],
                 "decoder.bias": state["decoder.bias"]}, str(source_dir / "model.safetensors"))
    (source_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    small = out_dir / "small.safetensors"
    isscompress.shrink(source_dir / "model.safetensors", small)
    assert isscompress.load_checkpoint(small).metadata.vocabulary == tuple(words)
    text = out_dir / "text.txt"
    text.write_text(" the cat sat \n" * 30)
    assert isscompress.evaluate(small, text).perplexity > 1  # no --vocab needed
