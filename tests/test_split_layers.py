"""iss.split_layers: a user model's multi-layer nn.LSTM/GRU/RNN becomes layers of their own widths (#32, item 6).

The split module must compute exactly what the multi-layer module computed (every class, direction, projection,
packed input, initial state, dropout in training), a budget must then be free to give its layers different widths,
and the file a split fine-tuning writes must reopen through the same --arch factory, shrink and load back."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils._pytree import tree_flatten

import isscompress
from isscompress.errors import RecipeError
from isscompress.io.loading import as_checkpoint

CASES = [(nn.LSTM, {}), (nn.LSTM, {"proj_size": 3}), (nn.GRU, {}), (nn.RNN, {"nonlinearity": "relu"})]


@pytest.mark.parametrize("cls,extra", CASES, ids=["lstm", "lstm-proj", "gru", "rnn-relu"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_the_split_module_computes_what_the_multi_layer_one_did(cls, extra, bidirectional) -> None:
    torch.manual_seed(0)
    whole = cls(5, 7, num_layers=3, bidirectional=bidirectional, batch_first=True, dropout=0.3, **extra).double()
    split = isscompress.split_layers(whole)
    assert [type(layer) for layer in split.layers] == [cls] * 3 and whole.num_layers == 3  # the original untouched
    x = torch.randn(4, 6, 5, dtype=torch.double)
    rows = 3 * (2 if bidirectional else 1)
    h0 = torch.randn(rows, 4, extra.get("proj_size") or 7, dtype=torch.double)
    state = (h0, torch.randn(rows, 4, 7, dtype=torch.double)) if cls is nn.LSTM else h0
    packed = pack_padded_sequence(x, torch.tensor([6, 5, 3, 2]), batch_first=True)
    for args in ((x,), (x, state), (packed,)):
        whole.eval(), split.eval()
        expected, got = tree_flatten(whole(*args))[0], tree_flatten(split(*args))[0]
        assert len(expected) == len(got) and all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
                                                 for a, b in zip(expected, got))
    whole.train(), split.train()  # the dropout between layers draws the same masks
    torch.manual_seed(1)
    expected = whole(x)[0]
    torch.manual_seed(1)
    assert torch.equal(expected, split(x)[0])


def test_final_states_of_layers_of_different_widths_come_back_per_layer_and_direction() -> None:
    torch.manual_seed(0)
    split = isscompress.split_layers(nn.LSTM(4, 6, num_layers=2, bidirectional=True))
    small = isscompress.resize_to(split, {**{k: v for k, v in split.state_dict().items() if "layers.1" not in k},
                                          **{k: v[..., :3] if "weight_hh" in k else v for k, v in
                                             _narrowed(split.layers[1], 3, "layers.1.").items()}})
    output, (h, c) = small(torch.randn(5, 2, 4))
    assert output.shape == (5, 2, 6) and [t.shape for t in h] == [(2, 6), (2, 6), (2, 3), (2, 3)]
    assert torch.equal(h[-1], output[0, :, 3:])  # the last layer's reverse direction ends at the first step


def _narrowed(layer: nn.LSTM, width: int, prefix: str) -> dict[str, torch.Tensor]:
    """A single-layer bidirectional LSTM's tensors keeping its first ``width`` units (gate rows in four blocks)."""
    out = {}
    for name, value in layer.state_dict().items():
        if name.startswith(("weight", "bias")):
            blocks = value.reshape(4, -1, *value.shape[1:])[:, :width].reshape(4 * width, *value.shape[1:])
            out[prefix + name] = blocks
    return out


def test_naming_a_module_that_is_not_multi_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="not a multi-layer nn.LSTM/GRU/RNN of this model: rnn"):
        isscompress.split_layers(nn.Sequential(nn.Linear(2, 2)), ["rnn"])


def _tagger(tmp_path, iss: str) -> tuple:
    """The zoo's two-layer bidirectional GRU tagger behind an --arch factory, with a recipe whose iss section is
    ``iss``."""
    from anymodel_zoo import GRUTagger

    (tmp_path / "arch.py").write_text(
        "import torch\nfrom anymodel_zoo import GRUTagger, tokens\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return GRUTagger(), (tokens(5, 3),), [(tokens(7, 4, seed=s),) for s in range(6)]\n")
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in GRUTagger().state_dict().items()}, str(tmp_path / "m.safetensors"))
    (tmp_path / "r.yaml").write_text(f"finetune: {{epochs: 1, lr: 0.01, optimizer: adam}}\niss: {iss}\n")
    return tmp_path / "m.safetensors", tmp_path / "r.yaml", f"{tmp_path / 'arch.py'}:make"


def test_a_split_fine_tuning_gives_each_layer_its_own_width_and_the_file_reopens(tmp_path) -> None:
    model, recipe, arch = _tagger(tmp_path, "{method: one-shot, split_layers: true, target_widths: "
                                            "{gru.layers.0.l0: 5, gru.layers.1.l0: 2}}")
    tuned = isscompress.finetune(model, recipe, tmp_path / "tuned.safetensors", arch=arch)
    assert tuned.widths == {"emb": 5, "gru.layers.0.l0": 5, "gru.layers.0.l0.reverse": 5, "gru.layers.1.l0": 2,
                            "gru.layers.1.l0.reverse": 2}
    small = isscompress.shrink(tmp_path / "tuned.safetensors", tmp_path / "small.safetensors", 0.0, arch=arch)
    assert small.max_abs_diff < 1e-9  # checked against the masked model in float64
    reopened = as_checkpoint(tmp_path / "small.safetensors", arch=arch)
    gru = reopened.model().gru
    assert [(layer.hidden_size, layer.input_size) for layer in gru.layers] == [(5, 5), (2, 10)]
    assert reopened.metadata.spec["split"] == ["gru"]
    # as a user's own code reopens it: split the factory's model as recorded, then resize to the tensors
    from anymodel_zoo import GRUTagger, tokens
    from safetensors.torch import load_file

    report = isscompress.report(model, tmp_path / "small.safetensors", arch=arch, speed=False)
    assert report.widths == {"gru.l0": (6, 5), "gru.l0.reverse": (6, 5), "gru.l1": (6, 2), "gru.l1.reverse": (6, 2),
                             "emb": (5, 5)}  # each layer of the original beside its own width
    mine = isscompress.resize_to(isscompress.split_layers(GRUTagger(), ["gru"]),
                                 load_file(tmp_path / "small.safetensors"))
    x = tokens(5, 3)
    assert torch.equal(mine.eval()(x), reopened.model()(x))


def test_split_layers_where_it_cannot_apply_is_refused_by_name(tmp_path) -> None:
    from anymodel_zoo import SelfAttentionTagger  # one single-layer LSTM: nothing to split

    (tmp_path / "one.py").write_text("import torch\nfrom anymodel_zoo import SelfAttentionTagger, tokens\n\n"
                                     "def make():\n    torch.manual_seed(0)\n    return SelfAttentionTagger(), "
                                     "(tokens(5, 3),), [(tokens(5, 3),)]\n")
    save_file({k: v.contiguous() for k, v in SelfAttentionTagger().state_dict().items()}, str(tmp_path / "one.st"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1}\niss: {method: one-shot, split_layers: true, target: {macs: 0.5}}\n")
    with pytest.raises(RecipeError, match="iss.split_layers: The model has no nn.LSTM, nn.GRU or nn.RNN of more"):
        isscompress.finetune(tmp_path / "one.st", recipe, arch=f"{tmp_path / 'one.py'}:make")


def test_a_model_whose_code_needs_one_width_is_refused_before_training(tmp_path) -> None:
    """Code that reshapes the stacked final states cannot run layers of different widths: said before any epoch."""
    (tmp_path / "stacked.py").write_text(
        "import torch\nfrom torch import nn\n\nclass Classifier(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.emb = nn.Embedding(20, 5)\n"
        "        self.lstm = nn.LSTM(5, 6, num_layers=2)\n        self.out = nn.Linear(12, 3)\n\n"
        "    def forward(self, x):\n        _, (h, _) = self.lstm(self.emb(x))\n"
        "        return self.out(h.permute(1, 0, 2).reshape(x.shape[1], -1))\n\n"
        "def make():\n    torch.manual_seed(0)\n    x = torch.randint(0, 20, (5, 3))\n"
        "    return Classifier(), (x,), [(x,)]\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("stacked", tmp_path / "stacked.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    save_file({k: v.contiguous() for k, v in module.make()[0].state_dict().items()}, str(tmp_path / "m.st"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1}\niss: {method: one-shot, split_layers: true, target: {macs: 0.5}}\n")
    with pytest.raises(RecipeError, match="iss.split_layers: With its layers of different widths the model's code"):
        isscompress.finetune(tmp_path / "m.st", recipe, tmp_path / "out.safetensors",
                             arch=f"{tmp_path / 'stacked.py'}:make")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_language_model_stack_refuses_split_layers(tmp_path) -> None:
    from test_bad_input_matrix import make_world

    world = make_world(tmp_path)
    world["recipe"].write_text(f"data: {{train: {world['text']}, valid: {world['text']}}}\nfinetune: {{epochs: 1}}\n"
                               "iss: {method: one-shot, split_layers: true, target: {macs: 0.5}}\n")
    with pytest.raises(RecipeError, match="the language-model stack's layers already have widths of their own"):
        isscompress.finetune(world["model"], world["recipe"])


def test_a_split_fine_tuning_resumes_after_sigint_to_the_uninterrupted_weights(tmp_path) -> None:
    """--resume splits the model again before reading its state: the resumed run ends where a straight one does."""
    from test_anymodel_cli import straight_and_resumed

    model, recipe, arch = _tagger(tmp_path, "{split_layers: true, target: {macs: 0.5}}")
    recipe.write_text(recipe.read_text().replace("epochs: 1", "epochs: 3, log_every: 1") + "distill: {alpha: 1.0}\n")
    a, b = straight_and_resumed(model, recipe, arch, tmp_path, step=8)
    assert any(".layers.1." in key for key in a)  # split, and removed in rounds (the default for a budget)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
