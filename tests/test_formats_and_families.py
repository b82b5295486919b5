"""Every supported file format and family loads into a model that computes what the original did."""

from __future__ import annotations

import pytest
import torch
from conftest import AwdLstm, make_rnn_model
from safetensors.torch import save_file
from torch import nn

import isscompress
from isscompress.core.groups import GroupSet, Member
from isscompress.errors import CheckpointError


def _same_outputs(original: nn.Module, loaded: nn.Module, inputs: torch.Tensor) -> None:
    with torch.no_grad():
        expected = original(inputs)
        got, _ = loaded(inputs)
    expected = expected[0] if isinstance(expected, tuple) else expected
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".safetensors"])
def test_word_language_model_state_dicts(tmp_path, rnn_type, tie, suffix, tokens) -> None:
    original = make_rnn_model(rnn_type, tie=tie)
    path = tmp_path / f"model{suffix}"
    state = original.state_dict()
    if suffix == ".safetensors":
        if tie:
            del state["decoder.weight"]  # safetensors refuses shared storage; this is how users save it
        save_file({k: v.contiguous() for k, v in state.items()}, str(path),
                  metadata={"rnn_type": rnn_type})
    else:
        torch.save(state, path)
    checkpoint = isscompress.load_checkpoint(path)
    assert checkpoint.family == "word_language_model"
    assert checkpoint.spec.tied is tie
    if rnn_type != "RNN_RELU" or suffix == ".safetensors":  # relu vs tanh is not in a bare state dict
        _same_outputs(original, checkpoint.model(), tokens)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU", "RNN_RELU"])
@pytest.mark.parametrize("tie", [False, True])
def test_pickled_rnn_model_is_read_without_running_its_code(tmp_path, rnn_type, tie, tokens) -> None:
    original = make_rnn_model(rnn_type, tie=tie)
    path = tmp_path / "model.pt"
    torch.save(original, path)  # what word_language_model/main.py does
    loaded = isscompress.load(path)
    assert loaded.spec.cell == rnn_type and loaded.spec.tied is tie
    _same_outputs(original, loaded, tokens)


def test_pickle_with_unknown_class_is_refused_with_conversion_lines(tmp_path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.LSTM(3, 4)), path)
    with pytest.raises(CheckpointError) as err:
        isscompress.load(path)
    assert "pickled Python objects" in str(err.value)
    assert "state_dict()" in str(err.value) and "whole.state_dict.pt" in str(err.value)


def test_malicious_pickle_does_not_run(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

    path = tmp_path / "evil.pt"
    torch.save({"encoder.weight": torch.zeros(2, 2), "payload": Exploit()}, path)
    with pytest.raises(CheckpointError):
        isscompress.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("cell, proj", [("LSTM", 0), ("LSTM", 3), ("GRU", 0)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_bare_rnn_stacks(tmp_path, cell, bidirectional, proj) -> None:
    torch.manual_seed(0)
    kwargs = {"proj_size": proj} if proj else {}
    original = getattr(nn, cell)(5, 6, num_layers=3, bidirectional=bidirectional, **kwargs).eval()
    path = tmp_path / "stack.safetensors"
    save_file(original.state_dict(), str(path))
    checkpoint = isscompress.load_checkpoint(path)
    assert checkpoint.family == "lstm_stack"
    assert checkpoint.spec.widths == [6, 6, 6] and checkpoint.spec.bidirectional is bidirectional
    _same_outputs(original, checkpoint.model(), torch.randn(4, 2, 5))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compile_prefixes_are_stripped(tmp_path, prefix, tokens) -> None:
    original = make_rnn_model()
    path = tmp_path / "prefixed.pt"
    torch.save({prefix + k: v for k, v in original.state_dict().items()}, path)
    _same_outputs(original, isscompress.load(path), tokens)


def test_nested_training_checkpoint(tmp_path, tokens) -> None:
    original = make_rnn_model()
    path = tmp_path / "train_state.pt"
    torch.save({"epoch": 3, "state_dict": original.state_dict()}, path)
    _same_outputs(original, isscompress.load(path), tokens)


@pytest.mark.parametrize("tie", [True, False])
def test_awd_lstm_weight_drop_layout(tmp_path, tie, tokens) -> None:
    original = AwdLstm(tie=tie).eval()
    path = tmp_path / "awd.pt"
    state = original.weight_drop_state()
    torch.save(state, path)
    checkpoint = isscompress.load_checkpoint(path)
    assert checkpoint.family == "awd_lstm"
    assert checkpoint.spec.widths == [7, 5, 4] and checkpoint.spec.tied is tie
    _same_outputs(original, checkpoint.model(), tokens)


def test_expected_group_set_of_a_two_layer_word_language_model(tmp_path) -> None:
    path = tmp_path / "m.pt"
    torch.save(make_rnn_model("LSTM", ntoken=23, ninp=6, nhid=5, nlayers=2).state_dict(), path)
    sets = isscompress.load_checkpoint(path).group_sets
    gates = (0, 5, 10, 15)
    assert sets == (
        GroupSet("layer0", 5, (
            Member("layers.0.weight_ih_l0", 0, gates), Member("layers.0.weight_hh_l0", 0, gates),
            Member("layers.0.bias_ih_l0", 0, gates), Member("layers.0.bias_hh_l0", 0, gates),
            Member("layers.0.weight_hh_l0", 1, (0,)), Member("layers.1.weight_ih_l0", 1, (0,)),
        ), same_width_as="layer0", label="layer 0"),
        GroupSet("layer1", 5, (
            Member("layers.1.weight_ih_l0", 0, gates), Member("layers.1.weight_hh_l0", 0, gates),
            Member("layers.1.bias_ih_l0", 0, gates), Member("layers.1.bias_hh_l0", 0, gates),
            Member("layers.1.weight_hh_l0", 1, (0,)), Member("decoder.weight", 1, (0,)),
        ), same_width_as="layer1", label="layer 1"),
        GroupSet("embedding", 6, (Member("encoder.weight", 1, (0,)), Member("layers.0.weight_ih_l0", 1, (0,))),
                 same_width_as="embedding", label="the embedding", kind="feature"),
    )
    tied = tmp_path / "tied.pt"  # tied, the embedding's dimensions are the last layer's units: no set of their own
    torch.save(make_rnn_model("LSTM", ntoken=23, ninp=5, nhid=5, nlayers=2, tie=True).state_dict(), tied)
    assert [gs.name for gs in isscompress.load_checkpoint(tied).group_sets] == ["layer0", "layer1"]


def test_group_norms_count_shared_diagonal_once() -> None:
    torch.manual_seed(0)
    spec = isscompress.ModelSpec("LSTM", (isscompress.LayerSpec(3, 4),))
    state = isscompress.RecurrentModel(spec).double().canonical_state()
    (group_set,) = spec.group_sets()
    norms = isscompress.unit_norms(state, group_set)
    for unit in range(4):  # brute force: mask of every element in the unit's group
        total = 0.0
        for member in group_set.members:
            mask = torch.zeros_like(state[member.key], dtype=torch.bool)
            for start in member.starts:
                mask.narrow(member.axis, start + unit, 1).fill_(True)
            total += state[member.key][mask].pow(2).sum()
        rows = torch.tensor([g * 4 + unit for g in range(4)])
        total -= state["layers.0.weight_hh_l0"][rows, unit].pow(2).sum()
        assert float(norms[unit]) == pytest.approx(float(total.sqrt()), rel=1e-12)


def test_tied_model_written_by_isscompress_loads_back_tied(tmp_path) -> None:
    """A tied model written by isscompress loads back tied (decoder shares the embedding)."""
    original = make_rnn_model(tie=True)
    source = tmp_path / "tied.pt"
    torch.save(original.state_dict(), source)
    from isscompress.verbs.shrink import shrink

    out = tmp_path / "tied.safetensors"
    shrink(source, out, threshold=0.0)
    model = isscompress.load(out)
    assert model.spec.tied and model.decoder.weight is model.encoder.weight


def test_pickle_module_is_not_required(tmp_path) -> None:
    """Reading a pickled RNNModel works where the ``model`` module cannot be imported."""
    path = tmp_path / "model.pt"
    torch.save(make_rnn_model(), path)
    import sys

    saved = sys.modules.pop("model")
    try:
        assert isscompress.load(path).spec.widths == [6, 6]
        assert "model" not in sys.modules
    finally:
        sys.modules["model"] = saved


@pytest.mark.parametrize("header, refused", [
    ({"recurrent_activation": "hard_sigmoid"}, "recurrent_activation = 'hard_sigmoid'"),  # Keras <= 2.2's default
    ({"use_peepholes": "True"}, "use_peepholes = 'True'"),
    ({"forget_bias": "1.0"}, "forget_bias = '1.0'"),
    ({"recurrent_activation": "sigmoid", "activation": "tanh", "use_peepholes": "false", "licence": "MIT"}, None),
])
def test_metadata_declaring_other_cell_equations_is_refused(tmp_path, header, refused) -> None:
    lstm = nn.LSTM(3, 4, num_layers=2)
    path = tmp_path / "lstm.safetensors"
    save_file({k: v.detach().contiguous() for k, v in lstm.state_dict().items()}, str(path), metadata=header)
    if refused is None:
        assert isscompress.load_checkpoint(path).spec.cell == "LSTM"
        assert "no peepholes" in isscompress.inspect(path).equations
        return
    with pytest.raises(CheckpointError, match="different function") as caught:
        isscompress.load_checkpoint(path)
    assert refused in str(caught.value) and str(path) in str(caught.value)


def test_a_relu_rnn_may_say_relu(tmp_path) -> None:
    rnn = nn.RNN(3, 4, nonlinearity="relu")
    path = tmp_path / "rnn.safetensors"
    save_file({k: v.detach().contiguous() for k, v in rnn.state_dict().items()}, str(path),
              metadata={"nonlinearity": "relu", "activation": "relu"})
    assert isscompress.load_checkpoint(path).spec.cell == "RNN_RELU"


def test_tied_model_saved_once_by_safetensors_save_model(tmp_path, tokens) -> None:
    from safetensors.torch import save_model

    original = make_rnn_model("LSTM", tie=True)
    path = tmp_path / "tied.safetensors"
    save_model(original, str(path))  # keeps the shared matrix under one name only
    checkpoint = isscompress.load_checkpoint(path)
    assert checkpoint.family == "word_language_model" and checkpoint.spec.tied
    with torch.no_grad():
        want = original(tokens)[0]
        got = checkpoint.model()(tokens)[0]
    torch.testing.assert_close(got.reshape(want.shape), want)


@pytest.mark.parametrize("key", ["model_state", "net", "state"])
def test_training_checkpoint_with_the_weights_under_any_key(tmp_path, key) -> None:
    model = make_rnn_model("GRU")
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(3, 2, dtype=torch.long))[0].sum().backward()
    optimizer.step()  # real optimizer state: tensors keyed by parameter index
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 7, key: model.state_dict(), "optimizer": optimizer.state_dict(), "best_loss": 4.2}, path)
    checkpoint = isscompress.load_checkpoint(path)
    assert checkpoint.family == "word_language_model" and checkpoint.spec.cell == "GRU"
    assert set(checkpoint.ignored) == {"epoch", "optimizer", "best_loss"}
    assert "optimizer" in isscompress.inspect(path).to_dict()["ignored"]


def test_two_models_in_one_checkpoint_are_named_not_guessed(tmp_path) -> None:
    path = tmp_path / "two.pt"
    torch.save({"model": make_rnn_model().state_dict(), "ema": make_rnn_model(seed=1).state_dict()}, path)
    with pytest.raises(CheckpointError, match="several state dicts with recurrent weights: 'model', 'ema'"):
        isscompress.load_checkpoint(path)


def _numpy_state(model: nn.Module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_numpy_npz_and_pickled_arrays_load(tmp_path, tokens) -> None:
    import pickle

    import numpy

    model = make_rnn_model("LSTM")
    numpy.savez(tmp_path / "weights.npz", **_numpy_state(model))
    with open(tmp_path / "weights.pkl", "wb") as handle:
        pickle.dump(_numpy_state(model), handle)
    for name in ("weights.npz", "weights.pkl"):
        checkpoint = isscompress.load_checkpoint(tmp_path / name)
        assert checkpoint.family == "word_language_model", name
        with torch.no_grad():
            torch.testing.assert_close(checkpoint.model()(tokens)[0], model(tokens)[0])


class _NotAnArray:
    pass


@pytest.mark.parametrize("make, message", [
    (lambda p: torch.jit.save(torch.jit.script(nn.LSTM(3, 4)), str(p)), "is a TorchScript archive"),
    (lambda p: p.write_bytes(__import__("pickle").dumps({"w": _NotAnArray()})), "pickle holding Python objects"),
])
def test_files_of_other_kinds_are_named_not_called_damaged(tmp_path, make, message) -> None:
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CheckpointError) as caught:
        isscompress.load_checkpoint(path)
    assert message in str(caught.value) and "damaged" not in str(caught.value)


def test_whole_model_in_the_legacy_torch_save_format_is_read_without_running_its_code(tmp_path, tokens) -> None:
    original = make_rnn_model("GRU", tie=True)
    path = tmp_path / "model.pt"
    torch.save(original, path, _use_new_zipfile_serialization=False)  # what torch < 1.6 wrote
    checkpoint = isscompress.load_checkpoint(path)
    assert checkpoint.family == "word_language_model" and checkpoint.spec.cell == "GRU" and checkpoint.spec.tied
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.model()(tokens)[0], original(tokens)[0])


class _Payload:
    def __reduce__(self):
        return (print, ("code from the file ran",))


def test_legacy_pickle_naming_any_other_callable_is_refused(tmp_path, capsys) -> None:
    model = make_rnn_model("LSTM")
    model.payload = _Payload()  # a module attribute whose unpickling would call print
    path = tmp_path / "model.pt"
    torch.save(model, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="outside the allow-list"):
        isscompress.load_checkpoint(path)
    assert "code from the file ran" not in capsys.readouterr().out


def test_an_embedding_and_rnn_without_any_decoder_is_not_taken_for_a_tied_lm(tmp_path) -> None:
    """A classifier's state dict with its head removed (the old advice) once read as a tied language model."""
    state = {k: v for k, v in make_rnn_model(tie=False).state_dict().items() if not k.startswith("decoder.")}
    path = tmp_path / "headless.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    with pytest.raises(CheckpointError, match="no decoder") as caught:
        isscompress.load_checkpoint(path)
    assert "--arch" in str(caught.value)
    tied = make_rnn_model(tie=True).state_dict()  # a tied model keeps decoder.bias, whatever is shared
    save_file({k: v.contiguous() for k, v in tied.items() if k != "decoder.weight"}, tmp_path / "tied.safetensors")
    assert isscompress.load_checkpoint(tmp_path / "tied.safetensors").spec.tied
