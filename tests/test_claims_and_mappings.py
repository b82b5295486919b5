"""Trust, round 4: a claim in a file (metadata, weight names, a name mapping) is checked against the tensors, and
two sources for one target are refused — never a silently wrong model. What a user's own functions raise or
return wrongly is reported as theirs (exit 1, the hook named), never as a bug of isscompress."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_bad_input_matrix import SPEC, WORDS
from test_keras import FIXTURES, _weights_only
from typer.testing import CliRunner

import isscompress
from anymodel_zoo import GRUTagger, tokens
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.cli import app
from isscompress.errors import CheckpointError
from isscompress.io.files import read_checkpoint

runner = CliRunner()


def _clean_error(result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert pattern in " ".join(result.stderr.split()), result.stderr


def _untied_file(tmp_path, record: dict) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    state = RecurrentModel(SPEC).canonical_state()
    assert "decoder.weight" in state and not torch.equal(state["decoder.weight"], state["encoder.weight"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"isscompress": json.dumps(record)})
    return path


@pytest.mark.parametrize("tied, message", [(True, "says the model is tied, but its tensors hold a decoder.weight"),
                                           ("false", "says tied is 'false', not true or false"),
                                           (1, "says tied is 1, not true or false")])
def test_a_tied_claim_that_the_tensors_deny_is_refused_and_nothing_is_written(tmp_path, tied, message) -> None:
    spec = {**SPEC.to_dict(), "tied": tied}
    path = _untied_file(tmp_path, {"family": "isscompress", "spec": spec, "vocabulary": WORDS})
    out = tmp_path / "small.safetensors"
    _clean_error(runner.invoke(app, ["shrink", str(path), "-o", str(out), "--threshold", "0"]), message)
    assert not out.exists()


def test_the_claim_that_agrees_still_reads_and_an_untied_pair_of_equal_matrices_stays_untied(tmp_path) -> None:
    path = _untied_file(tmp_path, {"family": "isscompress", "spec": SPEC.to_dict()})
    assert not isscompress.load_checkpoint(path).spec.tied and "decoder.weight" in isscompress.load_checkpoint(
        path).state


@pytest.mark.parametrize("record, message", [
    ({"format_version": "2"}, "format_version '2', which is not a format version"),
    ({"format_version": 9}, "written by a newer isscompress"),
    ({"kept": {"layer0": "0,1"}}, "field 'kept' is"),
    ({"widths_after": {"layer0": -3}}, "field 'widths_after' is"),
    ({"vocabulary": "a b c"}, "field 'vocabulary' is"),
    ({"vocabulary": ["a", "b", "a"]}, "not a list of distinct strings"),  # two ids for one word: wrong tokens
    ({"level": "byte"}, "field 'level' is"),
    ({"threshold": "small"}, "field 'threshold' is"),
    ({"lineage": [1, 2]}, "field 'lineage' is"),
    ({"lineage": [{"stage": 5}]}, "field 'lineage' is"),
    ({"spec": [1]}, "field 'spec' is"),
    ({"spec": {**SPEC.to_dict(), "cell": "Transformer"}}, "names the cell 'Transformer'"),
    ([1, 2], "is a list, not a JSON object"),
])
def test_metadata_of_the_wrong_json_type_is_refused_by_field(tmp_path, record, message) -> None:
    _clean_error(runner.invoke(app, ["inspect", str(_untied_file(tmp_path, record))]), message)


def test_deeply_nested_metadata_is_a_clean_error(tmp_path) -> None:
    path = tmp_path / "deep.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"isscompress": "[" * 50_000 + "]" * 50_000})
    _clean_error(runner.invoke(app, ["inspect", str(path)]), "nests its JSON too deeply")


def _spoil_weights_only(path, layer_index: int, change) -> None:
    with h5py.File(path, "r+") as f:
        layer = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]][layer_index]
        change(f, f[layer])


def test_weights_only_keras_names_that_clash_are_refused_not_one_silently_kept(tmp_path) -> None:
    path = _weights_only(FIXTURES / "k2_cudnn_lstm.h5", tmp_path / "w.h5")
    read_checkpoint(path)  # the file as Keras wrote it reads

    def second_kernel(f, group) -> None:
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        kernel = next(n for n in names if n.endswith("/kernel:0"))
        group.copy(group[kernel], "out/kernel:0")  # another dataset whose last path part is the same
        group.attrs["weight_names"] = np.array([*names, "out/kernel:0"], dtype="S")

    _spoil_weights_only(path, -1, second_kernel)
    with pytest.raises(CheckpointError, match="lists two weights named 'kernel'"):
        read_checkpoint(path)


@pytest.mark.parametrize("change, message", [
    (lambda f, g: f.attrs.__setitem__("keras_version", np.bytes_(b"2.\xff\xfe")), "keras_version is not UTF-8"),
    (lambda f, g: f.attrs.__setitem__("layer_names", np.array([b"x"] * 20_001)), "20,001 layer names"),
    (lambda f, g: _rank_one_kernel(g), "a recurrent layer's are non-empty matrices"),
])
def test_weights_only_keras_files_of_wrong_kinds_are_clean_errors(tmp_path, change, message) -> None:
    path = _weights_only(FIXTURES / "k2_cudnn_lstm.h5", tmp_path / "w.h5")
    with h5py.File(path) as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
    recurrent = next(i for i, n in enumerate(names) if "lstm" in n.lower())
    _spoil_weights_only(path, recurrent, change)
    _clean_error(runner.invoke(app, ["inspect", str(path)]), message)


def _rank_one_kernel(group) -> None:
    names: list[str] = []
    group.visititems(lambda name, item: names.append(name) if name.endswith("/kernel:0") else None)
    kernel = next(name for name in names if "recurrent" not in name)
    data = group[kernel][()]
    del group[kernel]
    group[kernel] = data.reshape(-1)


ARCH = '''
import torch
from anymodel_zoo import GRUTagger, tokens

CHECKPOINT_KEYS = {KEYS}

def make():
    torch.manual_seed(0)
    return GRUTagger(), (tokens(5, 3),), {BATCHES}

def task_loss(outputs, batch):
    return {LOSS}
'''


def _arch(tmp_path, keys="None", batches="[(tokens(5, 3, seed=s),) for s in range(3)]",
          loss="outputs.float().mean() * 0 + 1.0") -> str:
    (tmp_path / "arch.py").write_text(ARCH.replace("{KEYS}", keys).replace("{BATCHES}", batches)
                                      .replace("{LOSS}", loss))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in GRUTagger().state_dict().items()}, str(tmp_path / "m.safetensors"))
    return f"{tmp_path / 'arch.py'}:make"


def test_checkpoint_keys_mapping_two_tensors_to_one_name_are_refused(tmp_path) -> None:
    arch = _arch(tmp_path, keys="{'emb.weight': 'tag.weight', 'tag.weight': 'tag.weight'}")
    _clean_error(runner.invoke(app, ["inspect", str(tmp_path / "m.safetensors"), "--arch", arch]),
                 "maps 'emb.weight', 'tag.weight' all to 'tag.weight'")
    arch = _arch(tmp_path, keys="{'emb.weight': 'tag.weight'}")  # renamed onto a name the file already has
    _clean_error(runner.invoke(app, ["inspect", str(tmp_path / "m.safetensors"), "--arch", arch]),
                 "both become the model's 'tag.weight'")


def _finetune_user(tmp_path, arch: str, recipe_text: str):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    return runner.invoke(app, ["finetune", str(tmp_path / "m.safetensors"), "--arch", arch, "-r", str(recipe),
                               "-o", str(tmp_path / "out.safetensors")])


LABELLED = "finetune: {epochs: 1, lr: 0.001}\niss: {lambda: 0.001}\ndistill: {alpha: 0.5}\n"


@pytest.mark.parametrize("loss, message", [
    ("1.5", "returned float, not a scalar tensor"),
    ("torch.tensor(1.5)", "does not depend on the outputs"),
    ("outputs.sum(-1)", "returned a tensor of shape (5, 3)"),
    ("batch[7]", "task_loss(outputs, batch) in"),
])
def test_a_task_loss_that_raises_or_returns_no_loss_is_the_users_error(tmp_path, loss, message) -> None:
    result = _finetune_user(tmp_path, _arch(tmp_path, loss=loss), LABELLED)
    _clean_error(result, message)
    assert not (tmp_path / "out.safetensors").exists()
    assert not (tmp_path / "out.safetensors.log.jsonl").exists()


@pytest.mark.parametrize("batches, message", [
    ("lambda: (1 / 0 for _ in range(3))", "the iterable batches() returned in"),
    ("lambda: 1 / 0", "batches() in"),
    ("lambda: []", "Epoch 1 had no batches to train on"),
    ("[]", "Epoch 1 had no batches to train on"),
])
def test_batches_that_raise_or_are_empty_are_clean_errors(tmp_path, batches, message) -> None:
    recipe = "finetune: {epochs: 1, lr: 0.001}\niss: {lambda: 0.001}\n"
    _clean_error(_finetune_user(tmp_path, _arch(tmp_path, batches=batches), recipe), message)


@pytest.mark.parametrize("rnn_type, tied", [("LSTM", False), ("GRU", False), ("LSTM", True)])
def test_a_shrunk_word_language_model_runs_through_its_own_init_hidden(tmp_path, rnn_type, tied) -> None:
    """pytorch/examples' main.py and generate.py call model.init_hidden(bsz), which reads self.nhid."""
    from conftest import make_rnn_model

    model = make_rnn_model(rnn_type, ntoken=23, ninp=8, nhid=8, tie=tied)
    inputs = (tokens(5, 3, vocab=23), model.init_hidden(3))
    plan = isscompress.discover(model, inputs)
    kept = {gs.name: torch.arange(0, gs.size, 2) for gs in plan.group_sets}
    model.load_state_dict(isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept))
    small = isscompress.shrink_module(model, inputs, threshold=0.0)
    assert small.rnn.hidden_size == 4 and small.nhid == 4
    fresh = tokens(5, 2, vocab=23, seed=3)
    output, _ = small(fresh, small.init_hidden(2))  # as the user's scripts call it
    expected, _ = model(fresh, model.init_hidden(2))
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)


class LiteralWidth(torch.nn.Module):
    """A speech-style block whose Linear width is also written as a literal in the forward (a reshape to 16): that
    width cannot go, but the recurrent layer after it can."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(20, 8)
        self.pre = torch.nn.Linear(8, 16)
        self.rnn = torch.nn.LSTM(16, 6, bidirectional=True)
        self.out = torch.nn.Linear(12, 5)

    def forward(self, ids):
        steps, batch = ids.shape
        features = self.pre(self.emb(ids)).reshape(steps * batch, 16).reshape(steps, batch, 16)
        return self.out(self.rnn(features)[0])


def test_an_optional_width_that_cannot_shrink_exactly_is_left_whole_not_the_whole_model_refused(tmp_path) -> None:
    model, inputs = LiteralWidth().eval(), (tokens(5, 3, vocab=20),)
    plan = isscompress.discover(model, inputs)
    names = {gs.name for gs in plan.group_sets}
    assert {"rnn.l0", "rnn.l0.reverse", "emb"} <= names and not any(name.startswith("pre") for name in names)
    assert "shrinking it is not exact" in plan.left_whole["pre"]
    kept = {gs.name: torch.arange(0, gs.size, 2) for gs in plan.group_sets}
    model.load_state_dict(isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept))
    small = isscompress.shrink_module(model, inputs, threshold=0.0)
    assert small.rnn.hidden_size == 3 and small.emb.embedding_dim == 4 and small.pre.out_features == 16
    (tmp_path / "arch.py").write_text("import torch\nfrom test_claims_and_mappings import LiteralWidth\n"
                                      "from anymodel_zoo import tokens\n\ndef make():\n"
                                      "    return LiteralWidth().eval(), (tokens(5, 3, vocab=20),)\n")
    save_file({k: v.contiguous() for k, v in LiteralWidth().state_dict().items()}, str(tmp_path / "m.safetensors"))
    result = runner.invoke(app, ["inspect", str(tmp_path / "m.safetensors"), "--arch", f"{tmp_path / 'arch.py'}:make"])
    assert result.exit_code == 0, result.output
    assert "Left whole: pre — shrinking it is not exact" in " ".join(result.stdout.split())


@pytest.mark.parametrize("change, message", [
    (lambda t: torch.cat([t, t[:1]]), "is never larger or of another rank"),
    (lambda t: t.reshape(-1), "is never larger or of another rank"),
])
def test_an_arch_checkpoint_wider_than_the_model_or_of_another_rank_is_refused(tmp_path, change, message) -> None:
    arch = _arch(tmp_path)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in GRUTagger().state_dict().items()}
    state["tag.weight"] = change(state["tag.weight"]).contiguous()
    save_file(state, str(tmp_path / "m.safetensors"))
    _clean_error(runner.invoke(app, ["inspect", str(tmp_path / "m.safetensors"), "--arch", arch]), message)


def test_an_awd_lstm_file_with_two_trained_recurrent_weights_for_one_layer_is_refused(tmp_path) -> None:
    from conftest import AwdLstm

    state = AwdLstm().weight_drop_state()
    raw = next(key for key in state if key.endswith("weight_hh_l0_raw"))
    state[raw.replace(".module.", ".")] = state[raw] * 2  # the same layer's weight again, without the wrapper
    path = tmp_path / "awd.safetensors"
    save_file({k: v.clone().contiguous() for k, v in state.items() if k != "decoder.weight"}, str(path))
    _clean_error(runner.invoke(app, ["inspect", str(path)]), "Two tensors hold the trained recurrent weight")


def test_masking_a_tied_weight_masks_every_name_it_has_so_loading_it_back_stays_masked() -> None:
    from conftest import make_rnn_model

    model = make_rnn_model("LSTM", ntoken=23, ninp=8, nhid=8, tie=True)
    plan = isscompress.discover(model, (tokens(5, 3, vocab=23),))
    assert plan.aliases == {"decoder.weight": "encoder.weight"}
    kept = {gs.name: torch.arange(0, gs.size, 2) for gs in plan.group_sets}
    for state, aliases in ((model.state_dict(), None),  # one storage under two names: found by storage
                           ({k: v.clone() for k, v in model.state_dict().items()}, plan.aliases)):  # copies: named
        masked = isscompress.mask_state_dict(state, plan.group_sets, kept, aliases=aliases)
        copy = make_rnn_model("LSTM", ntoken=23, ninp=8, nhid=8, tie=True)
        copy.load_state_dict(masked)
        assert bool((copy.encoder.weight[:, 1::2] == 0).all()) and copy.decoder.weight is copy.encoder.weight
