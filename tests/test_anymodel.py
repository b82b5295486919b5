"""The any-model API on a zoo of recurrent models: exact shrinks, refusals that name the op, GroupLasso."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._pytree import tree_flatten

import isscompress
from anymodel_zoo import AttentionClassifier, tokens, zoo
from isscompress.anymodel import GroupsFileError, TraceError
from isscompress.anymodel.sharing import with_shared
from isscompress.core.groups import all_unit_norms
from isscompress.core.surgery import mask_state_dict
from isscompress.core.thresholding import select_kept
from isscompress.errors import ShrinkError

ZOO = zoo()


def outputs64(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    """The model's outputs in float64 (tensors its forward makes with torch.zeros included)."""
    model = copy.deepcopy(model).double().eval()
    inputs = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            return [t for t in tree_flatten(model(*inputs))[0] if isinstance(t, torch.Tensor)]
    finally:
        torch.set_default_dtype(previous)


def zero_random_groups(model: nn.Module, plan: isscompress.Plan, seed: int, keep_fraction: float) -> nn.Module:
    """A copy with random units' groups zeroed (widths made legal the way shrink makes them)."""
    g = torch.Generator().manual_seed(seed)
    wanted = {gs.name: torch.randperm(gs.size, generator=g)[: max(1, int(gs.size * keep_fraction))]
              for gs in plan.group_sets}
    state = mask_state_dict(model.state_dict(), plan.group_sets, wanted)
    kept = select_kept(all_unit_norms(state, plan.group_sets), plan.group_sets, 0.0)
    masked = copy.deepcopy(model)
    masked.load_state_dict(with_shared(mask_state_dict(state, plan.group_sets, kept), plan.aliases))  # tied names too
    return masked


@pytest.mark.parametrize("name", sorted(ZOO))
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), keep=st.floats(0.2, 1.0))
def test_shrink_module_computes_what_the_masked_model_computes(name, seed, keep):
    model, inputs = ZOO[name]
    plan = isscompress.discover(model, inputs)
    masked = zero_random_groups(model, plan, seed, keep)
    small = isscompress.shrink_module(masked, inputs, threshold=0.0, plan=plan)
    before = sum(p.numel() for p in masked.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert after <= before
    assert type(small) is type(model)
    for expected, actual in zip(outputs64(masked, inputs), outputs64(small, inputs)):
        assert expected.shape == actual.shape  # every zoo model's outputs are free of hidden features
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)
    # the original is untouched, and the smaller model is really smaller where units died
    if keep < 0.9:
        assert after < before


def test_plans_find_the_readers_and_couplings_of_each_model():
    described = {name: isscompress.discover(*ZOO[name]) for name in ZOO}
    names = {name: [gs.name for gs in plan.group_sets if gs.kind == "recurrent"] for name, plan in described.items()}
    assert names["seq2seq"] == ["encoder.l0+decoder.l0", "encoder.l1+decoder.l1"]  # (h, c) handed over
    assert names["bi_encoder_seq2seq"] == ["encoder.l0+decoder.l0[0:4]", "encoder.l0.reverse+decoder.l0[4:8]"]
    assert names["stacked_dropout"] == ["first.l0+second.l0"]  # a + b couples the two modules' units
    assert names["projected_classifier"] == ["lstm.l0", "lstm.l0.proj"]
    # an RHN layer's ownership comes from the cell table, as in the language-model stack: every micro-layer's
    # recurrent weights and biases (two gate blocks each), read by the LSTM after it
    highway = described["highway_tagger"].group_sets[0]
    assert highway.name == "rhn.l0" and {(m.key, m.axis) for m in highway.members} == {
        ("rhn.weight_ih_l0", 0), ("rhn.weight_hh0_l0", 0), ("rhn.weight_hh0_l0", 1), ("rhn.weight_hh1_l0", 0),
        ("rhn.weight_hh1_l0", 1), ("rhn.bias_hh0_l0", 0), ("rhn.bias_hh1_l0", 0), ("lstm.weight_ih_l0", 1)}
    assert next(m for m in highway.members if m.key == "rhn.weight_hh1_l0" and m.axis == 0).starts == (0, 6)
    bidaf = described["bidaf"]
    context = next(gs for gs in bidaf.group_sets if gs.name == "context.l0")
    keys = {m.key for m in context.members}
    # the shared encoder is read by the trilinear similarity, the modeling LSTM and both pointers
    assert {"w_h", "w_u", "w_hu", "modeling.weight_ih_l0", "modeling.weight_ih_l0_reverse", "start.weight",
            "end.weight"} <= keys
    modeling_input = next(m for m in context.members if m.key == "modeling.weight_ih_l0")
    hidden = context.size
    # G = [h; c2q; h*c2q; h*q2c]: the forward unit k is column k of each of the four blocks
    assert modeling_input.starts == tuple(block * 2 * hidden for block in range(4))
    assert "read by" in bidaf.describe()


def test_every_width_whose_features_only_reach_weights_is_a_set_and_the_others_stay_whole():
    """Embedding dimensions, a Conv1d's channels, an MLP's hidden units and attention projections are sets; output
    classes (a classifier,
    a vocabulary projection, a tag head), a Linear whose features a LayerNorm mixes, and a tied embedding are not."""
    features = {name: [gs.name for gs in isscompress.discover(*ZOO[name]).group_sets if gs.kind == "feature"]
                for name in ZOO}
    assert features["mlp_tagger"] == ["emb", "conv", "fc1"]
    assert features["seq2seq"] == ["src", "tgt"] and features["projected_classifier"] == []
    assert features["packed_tagger"] == ["emb"]  # its Conv1d makes the tags: output classes
    assert features["self_attention"] == ["emb", "q+k", "v"]  # a query unit with its key: they meet only in scores
    assert features["attention_classifier"] == ["emb"]  # `score` meets a softmax over time: its one unit stays
    mlp = {gs.name: gs for gs in isscompress.discover(*ZOO["mlp_tagger"]).group_sets}
    assert {(m.key, m.axis) for m in mlp["fc1"].members} == {("fc1.weight", 0), ("fc1.bias", 0), ("out.weight", 1)}
    assert {(m.key, m.axis) for m in mlp["emb"].members} == {("emb.weight", 1), ("conv.weight", 1)}
    assert {(m.key, m.axis) for m in mlp["conv"].members} == {("conv.weight", 0), ("conv.bias", 0),
                                                              ("lstm.weight_ih_l0", 1)}
    assert isscompress.discover(*ZOO["mlp_tagger"], features=False).group_sets == tuple(
        gs for gs in mlp.values() if gs.kind == "recurrent")


def test_groups_file_round_trip_and_shrink(tmp_path):
    model, inputs = ZOO["bidaf"]
    plan = isscompress.discover(model, inputs)
    plan.save(tmp_path / "groups.yaml")
    loaded = isscompress.load_groups(tmp_path / "groups.yaml", model.state_dict())
    assert loaded.group_sets == plan.group_sets
    masked = zero_random_groups(model, plan, 3, 0.5)
    small = isscompress.shrink_module(masked, inputs, threshold=0.0, plan=loaded)
    for expected, actual in zip(outputs64(masked, inputs), outputs64(small, inputs)):
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)


def test_bad_groups_files_name_the_problem(tmp_path):
    model, inputs = ZOO["gru_tagger"]
    plan = isscompress.discover(model, inputs)
    path = tmp_path / "g.yaml"
    path.write_text("sets: []\n")
    with pytest.raises(GroupsFileError, match="format: isscompress-groups/1"):
        isscompress.load_groups(path)
    data = plan.to_dict()
    data["sets"][0]["members"][0]["key"] = "gru.weight_ih_l7"
    import yaml

    path.write_text(yaml.safe_dump(data))
    with pytest.raises(GroupsFileError, match="gru.weight_ih_l7"):
        isscompress.load_groups(path, model.state_dict())
    data = plan.to_dict()
    data["sets"][0]["members"][0]["starts"] = [10_000]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(GroupsFileError, match="reaches past"):
        isscompress.load_groups(path, model.state_dict())


def test_a_plan_missing_a_reader_is_caught_by_the_float64_check():
    model, inputs = ZOO["attention_classifier"]
    plan = isscompress.discover(model, inputs)
    first = plan.group_sets[0]
    without_score = type(first)(first.name, first.size, tuple(m for m in first.members if m.key != "score.weight"),
                                first.same_width_as, first.narrower_than)
    broken = isscompress.Plan((without_score,) + plan.group_sets[1:])
    masked = zero_random_groups(model, plan, 0, 0.5)
    with pytest.raises(ShrinkError):
        isscompress.shrink_module(masked, inputs, threshold=0.0, plan=broken)


@pytest.mark.parametrize("module", ["pre", "out"], ids=["features a LayerNorm mixes", "the output classes"])
def test_a_width_declared_where_units_cannot_go_is_refused_by_the_float64_check(tmp_path, module):
    """The tracer leaves these widths whole; declared by hand in a groups file (rows of the Linear, columns of its
    reader), removing their zero units would change what the model computes, and the check says so."""
    model, inputs = ZOO["mlp_tagger"]
    plan = isscompress.discover(model, inputs)
    assert module not in {gs.name for gs in plan.group_sets}
    linear = getattr(model, module)
    members = [isscompress.Member(f"{module}.weight", 0, (0,)), isscompress.Member(f"{module}.bias", 0, (0,))]
    if module == "pre":
        members.append(isscompress.Member("out.weight", 1, (model.fc1.out_features,)))
    declared = isscompress.Plan(plan.group_sets + (isscompress.GroupSet(module, linear.out_features, tuple(members),
                                                                         kind="feature"),))
    masked = copy.deepcopy(model)
    with torch.no_grad():  # one unit of the declared width exactly zero, as group Lasso would leave it
        for member in members:
            dict(masked.named_parameters())[member.key].select(member.axis, member.starts[0] + 1).zero_()
    with pytest.raises(ShrinkError):
        isscompress.shrink_module(masked, inputs, threshold=0.0, plan=declared)


def test_resize_to_loads_a_shrunk_state_dict_into_the_original_class():
    model, inputs = ZOO["packed_tagger"]
    plan = isscompress.discover(model, inputs)
    small = isscompress.shrink_module(zero_random_groups(model, plan, 5, 0.5), inputs, 0.0, plan)
    again = isscompress.resize_to(type(model)(), small.state_dict())
    for expected, actual in zip(outputs64(small, inputs), outputs64(again, inputs)):
        torch.testing.assert_close(actual, expected)
    assert again.lstm.hidden_size == small.lstm.hidden_size < model.lstm.hidden_size


# ----- refusals: each names the module and the operation ----------------------------------------
class Refused(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.emb = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)
        self.heads = nn.Linear(4, 3)
        self.h0 = nn.Parameter(torch.randn(1, 1, 8))
        self.cell = nn.LSTMCell(6, 8)

    def forward(self, x):
        e = self.emb(x)
        if self.how == "initial_state":
            h, _ = self.lstm(e, (self.h0.expand(1, x.shape[0], 8).contiguous(), torch.zeros(1, x.shape[0], 8)))
        else:
            h, _ = self.lstm(e)
        if self.how == "layer_norm":
            return self.head(self.norm(h))
        if self.how == "sigmoid":
            return self.head(torch.sigmoid(h))
        if self.how == "mixing_reshape":
            return self.heads(h.reshape(h.shape[0], h.shape[1], 2, 4))
        if self.how == "softmax":
            return self.head(torch.softmax(h, -1))
        if self.how == "residual":
            return self.head(h + torch.ones_like(h))
        if self.how == "sum_features":
            return h.sum(-1)
        return self.head(h)


@pytest.mark.parametrize("how, words", [
    ("layer_norm", ["`norm`", "layer_norm"]),
    ("sigmoid", ["sigmoid", "`lstm.l0`"]),
    ("mixing_reshape", ["`heads`", "linear"]),
    ("softmax", ["softmax"]),
    ("residual", ["`add`", "not hidden features"]),
    ("initial_state", ["initial state", "`lstm"]),
    ("sum_features", ["sum"]),
])
def test_what_cannot_be_followed_is_refused_by_name(how, words):
    with pytest.raises(TraceError) as caught:
        isscompress.discover(Refused(how), (tokens(2, 5),))
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert "YAML groups file" in message


def test_the_refusal_hint_is_a_path_that_works(tmp_path):
    """The hint: groups saved from the model with the refused operation taken out, given to the refused model."""
    groups = tmp_path / "groups.yaml"
    isscompress.discover(Refused("plain"), (tokens(2, 5),)).save(groups)  # the same model without the LayerNorm
    refused = Refused("layer_norm")
    plan = isscompress.load_groups(groups, refused.state_dict())
    assert [gs.name for gs in plan.group_sets if gs.kind == "recurrent"] == ["lstm.l0"]
    assert {m.key for m in plan.group_sets[0].members} >= {"lstm.weight_ih_l0", "head.weight"}


class SteppedDecoder(nn.Module):
    """Cells stepped by forward's own loop, Tacotron-style: an LSTMCell whose output is fed back through a GRUCell
    and a head, a relu RNNCell beside it, states made with torch.zeros (float32: the float64 check still runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.cell = nn.Embedding(20, 5), nn.LSTMCell(5 + 3, 6)
        self.gru, self.rnn = nn.GRUCell(6, 4), nn.RNNCell(5, 3, nonlinearity="relu")
        self.out = nn.Linear(4 + 3, 3)

    def forward(self, x, g):  # g: a GRUCell state passed in by the caller
        h = c = torch.zeros(x.shape[1], self.cell.hidden_size)
        r = torch.zeros(x.shape[1], self.rnn.hidden_size)
        y, outs = torch.zeros(x.shape[1], 3), []
        for t in range(x.shape[0]):
            h, c = self.cell(torch.cat([self.emb(x[t]), y], -1), (h, c))
            g, r = self.gru(h, g), self.rnn(self.emb(x[t]), r)
            y = self.out(torch.cat([g, r], -1))
            outs.append(y)
        return torch.stack(outs), g


def test_cells_stepped_by_the_models_own_loop_shrink_exactly():
    torch.manual_seed(0)
    model, inputs = SteppedDecoder(), (tokens(6, 3), torch.zeros(3, 4))
    plan = isscompress.discover(model, inputs)
    assert sorted(gs.name for gs in plan.group_sets) == ["cell.l0", "emb", "gru.l0", "rnn.l0"]  # emb: both cells read it
    assert list(plan.input_labels) == [1]
    masked = zero_random_groups(model, plan, 2, 0.5)
    with torch.no_grad():  # the decoder's state carried from its own last call (streaming): zero at removed units
        inputs = (inputs[0], masked(*inputs)[1])
    small = isscompress.shrink_module(masked, inputs, threshold=0.0)
    assert (small.cell.hidden_size, small.gru.hidden_size, small.rnn.hidden_size) < (6, 4, 3)
    assert type(small.rnn) is nn.RNNCell and small.rnn.nonlinearity == "relu"
    kept = [u for u in range(4) if float(masked.gru.weight_hh[:, u].abs().sum()) > 0]
    assert len(kept) == small.gru.hidden_size
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the model's own torch.zeros, in float64 like its weights
    try:
        with torch.no_grad():  # the logits at every step, against the masked model, checked here
            expected = masked.double()(inputs[0], inputs[1].double())[0]
            actual = small.double()(inputs[0], inputs[1].double()[:, kept])[0]
    finally:
        torch.set_default_dtype(previous)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)


def test_a_decoder_tied_to_its_embedding_shrinks_exactly_and_stays_tied():
    """An embedding dimension is a tied decoder's column: it goes with the last layer's unit, and with it the first
    layer's input column that reads that dimension (the language-model path's rule, found here by a second run)."""
    import model as wlm

    torch.manual_seed(0)
    model = wlm.RNNModel("LSTM", 30, 8, 8, 2, tie_weights=True).eval()
    data = tokens(6, 3)
    plan = isscompress.discover(model, (data,))
    assert plan.aliases == {"decoder.weight": "encoder.weight"}
    assert [gs.kind for gs in plan.group_sets] == ["recurrent", "recurrent"]  # the tied embedding: no set of its own
    last = next(gs for gs in plan.group_sets if gs.name == "rnn.l1")
    assert {(m.key, m.axis) for m in last.members} >= {("encoder.weight", 1), ("rnn.weight_ih_l0", 1)}
    masked = zero_random_groups(model, plan, 4, 0.5)
    small = isscompress.shrink_module(masked, (data,), threshold=0.0)
    assert small.decoder.weight is small.encoder.weight and small.encoder.embedding_dim == small.rnn.hidden_size < 8
    for inputs in ((data,), (tokens(9, 3, seed=7),)):  # the example inputs and fresh ones, checked here
        torch.testing.assert_close(outputs64(small, inputs)[0], outputs64(masked, inputs)[0], rtol=1e-9, atol=1e-10)
    reg = isscompress.GroupLasso(model, plan, lam=50.0)  # one parameter, scaled once per step
    reg.step(lr=1.0)
    assert model.decoder.weight is model.encoder.weight and min(reg.widths().values()) < 8


def test_tied_weights_read_by_rows_are_refused():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm = nn.Embedding(20, 8), nn.LSTM(8, 8)
            self.proj = nn.Parameter(torch.randn(8, 4))
            self.again = self.proj  # one parameter under two names, read along its rows by h @ W

        def forward(self, x):
            return self.lstm(self.emb(x))[0] @ self.again

    with pytest.raises(TraceError, match="rows of a weight shared by proj, again"):
        isscompress.discover(Shared(), (tokens(5, 2),))


def test_wrong_example_inputs_say_so():
    with pytest.raises(TraceError, match="example inputs"):
        isscompress.discover(AttentionClassifier(), (torch.randn(2, 3),))


# ----- GroupLasso --------------------------------------------------------------------------------
def brute_force_groups(model: nn.Module, plan: isscompress.Plan) -> list[dict[str, torch.Tensor]]:
    """One boolean mask per tensor for every unit of every set, built element by element."""
    state = model.state_dict()
    groups = []
    for gs in plan.group_sets:
        for k in range(gs.size):
            masks = {}
            for m in gs.members:
                mask = masks.setdefault(m.key, torch.zeros(state[m.key].shape, dtype=torch.bool))
                for start in m.starts:
                    index = [slice(None)] * mask.dim()
                    index[m.axis] = start + k
                    mask[tuple(index)] = True
            groups.append(masks)
    return groups


@pytest.mark.parametrize("method", ["proximal", "subgradient"])
def test_group_lasso_step_matches_brute_force(method):
    model, inputs = ZOO["bi_encoder_seq2seq"]
    model = copy.deepcopy(model).double()
    plan = isscompress.discover(model, inputs)
    params = dict(model.named_parameters())
    before = {k: p.detach().clone() for k, p in params.items()}
    lam, lr = 0.3, 0.5
    groups = brute_force_groups(model, plan)
    expected = {k: v.clone() for k, v in before.items()}
    if method == "proximal":
        factors = []
        for masks in groups:
            norm = torch.sqrt(sum((before[k][m] ** 2).sum() for k, m in masks.items()))
            factors.append((masks, max(0.0, 1 - lr * lam / float(norm))))
        for masks, factor in factors:
            for k, m in masks.items():
                expected[k][m] *= factor
    else:
        weights = {k: before[k].clone().requires_grad_(True) for k in before}
        penalty = sum(lam * torch.sqrt(sum((weights[k][m] ** 2).sum() for k, m in masks.items()))
                      for masks in groups)
        penalty.backward()
        expected = {k: before[k] - lr * (weights[k].grad if weights[k].grad is not None else 0) for k in before}
    reg = isscompress.GroupLasso(model, plan, lam=lam, method=method, zero_threshold=0.0, widths="all")
    assert reg.penalty() == pytest.approx(sum(
        lam * float(torch.sqrt(sum((before[k][m] ** 2).sum() for k, m in masks.items()))) for masks in groups))
    reg.step(lr)
    for k, p in params.items():
        torch.testing.assert_close(p.detach(), expected[k], rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.parametrize("optimizer_class, lr, lam", [(torch.optim.SGD, 0.2, 0.5), (torch.optim.Adam, 0.01, 10.0)])
def test_group_lasso_in_a_users_loop_reaches_target_widths_and_shrinks(optimizer_class, lr, lam):
    """The optimizer revives dead units between steps (momentum, gradients on zeros); they must not count as
    alive, or the sets would shrink past their targets."""
    model, inputs = copy.deepcopy(ZOO["gru_tagger"][0]), ZOO["gru_tagger"][1]
    plan = isscompress.discover(model, inputs)
    targets = {gs.name: 3 for gs in plan.group_sets if gs.kind == "recurrent"}
    reg = isscompress.GroupLasso(model, plan, lam=lam, method="proximal", targets=targets)
    optimizer = optimizer_class(model.parameters(), lr=lr)
    tags = torch.randint(0, 4, (5, 3), generator=torch.Generator().manual_seed(0))
    for _ in range(100):
        loss = nn.functional.nll_loss(model(*inputs).reshape(-1, 4), tags.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reg.step(lr)
    assert reg.widths() == targets
    small = isscompress.shrink_module(model, inputs, threshold=0.0, plan=plan)
    assert small.gru.hidden_size == 3 and small.tag.in_features == 6
    torch.testing.assert_close(small(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no group set named"):
        isscompress.GroupLasso(model, plan, lam=0.1, targets={"lstm": 2})


def test_label_free_finetune_holds_the_targets_while_adam_revives_dead_units():
    """Adam's momentum moves zeroed weights off zero between steps; frozen dead units must not count as alive
    (they did once, and the sets shrank past their targets)."""
    from isscompress.training.label_free import finetune_label_free

    torch.manual_seed(0)
    model, inputs = ZOO["gru_tagger"][0].__class__(), ZOO["gru_tagger"][1]
    plan = isscompress.discover(model, inputs)
    targets = {gs.name: 3 for gs in plan.group_sets if gs.kind == "recurrent"}
    batches = [(tokens(5, 3, seed=s),) for s in range(8)]
    lasso = finetune_label_free(model, batches, plan, lam=10.0, targets=targets, epochs=4, lr=0.01)
    assert lasso.widths() == targets


def test_zeros_made_in_forward_are_not_hidden_features():
    """torch.zeros (an initial state, padding) may go through any op: only units' features are followed."""

    class ZeroStart(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm, self.out = nn.Embedding(20, 6), nn.LSTM(6, 5, batch_first=True), nn.Linear(5, 3)

        def forward(self, x):
            h0 = torch.zeros(1, x.shape[0], 5).contiguous()
            gate = torch.exp(h0)  # an op isscompress does not follow, on zeros: fine, they are not a unit's features
            out, _ = self.lstm(self.emb(x), (h0, torch.zeros_like(h0)))
            return self.out(out[:, -1] * gate[0])

    plan = isscompress.discover(ZeroStart(), (tokens(2, 4),))
    assert [gs.name for gs in plan.group_sets] == ["lstm.l0", "emb"]


def test_group_lasso_widths_are_what_shrink_keeps():
    """4 forward units of a bidirectional GRU zeroed: one nn.GRU keeps one width for both directions."""
    torch.manual_seed(0)

    class BiGRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru, self.out = nn.GRU(3, 6, bidirectional=True), nn.Linear(12, 2)

        def forward(self, x):
            return self.out(self.gru(x)[0])

    model, inputs = BiGRU(), (torch.randn(4, 2, 3),)
    plan = isscompress.discover(model, inputs)
    masked = model
    with torch.no_grad():
        forward = next(gs for gs in plan.group_sets if gs.name == "gru.l0")
        for member in forward.members:
            for start in member.starts:
                dict(masked.named_parameters())[member.key].narrow(member.axis, start, 4).zero_()
    reg = isscompress.GroupLasso(masked, plan, lam=1e-3)
    small = isscompress.shrink_module(masked, inputs, threshold=0.0, plan=plan)
    assert reg.widths() == {"gru.l0": small.gru.hidden_size, "gru.l0.reverse": small.gru.hidden_size} == \
        {"gru.l0": 6, "gru.l0.reverse": 6}


@pytest.mark.parametrize("arguments, words", [({"lam": 0.0}, "lam: Input should be greater than 0"),
                                              ({"lam": float("inf")}, "lam: Input should be a finite number"),
                                              ({"lam": 1e-3, "method": "l1"}, "method: Input should be")])
def test_group_lasso_arguments_are_refused_in_their_own_names(arguments, words):
    model, inputs = ZOO["gru_tagger"]
    with pytest.raises(ValueError, match=words):
        isscompress.GroupLasso(model, isscompress.discover(model, inputs), **arguments)


class PaddedBidirectional(nn.Module):
    """Returns the padded bidirectional sequence itself (pad_packed_sequence adds zeros for every unit's column)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lstm, self.out = nn.Embedding(20, 5), nn.LSTM(5, 6, bidirectional=True), nn.Linear(12, 3)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(x), lengths, enforce_sorted=False)
        padded, _ = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0])
        return self.out(padded), padded


class NewZeros(nn.Module):
    """An initial state allocated with Tensor.new(...).zero_(), as older model code writes init_hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.lstm, self.out = nn.Embedding(20, 5), nn.LSTM(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        e = self.emb(x)
        h0 = e.new(1, x.shape[1], self.lstm.hidden_size).zero_()
        return self.out(self.lstm(e, (h0, h0.clone()))[0])


@pytest.mark.parametrize("model, inputs", [
    (PaddedBidirectional, (tokens(7, 3), torch.tensor([7, 4, 2]))),
    (NewZeros, (tokens(7, 3),)),
], ids=["padded bidirectional output", "Tensor.new zero state"])
def test_padded_outputs_and_new_allocations_shrink_exactly(model, inputs):
    torch.manual_seed(0)
    model = model()
    plan = isscompress.discover(model, inputs)
    masked = zero_random_groups(model, plan, 1, 0.5)
    small = isscompress.shrink_module(masked, inputs, threshold=0.0)
    assert small.lstm.hidden_size < 6
    expected, actual = outputs64(masked, inputs), outputs64(small, inputs)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-9, atol=1e-10)  # the logits: every position
    if len(expected) > 1:  # the padded sequence: the kept units' columns, padding included
        kept = [c for c in range(12) if bool(expected[1][..., c].abs().sum() > 0)]
        torch.testing.assert_close(actual[1], expected[1][..., kept], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("carried", [False, True], ids=["init_hidden zeros", "a state carried from the last batch"])
def test_a_state_passed_in_as_pytorch_examples_main_py_does_shrinks_with_its_layer(carried):
    """main.py calls model(data, hidden) with hidden = init_hidden(bsz), then carries it across batches: the state
    is the layer's own units, cut with them."""
    import model as wlm

    torch.manual_seed(0)
    model = wlm.RNNModel("LSTM", 20, 6, 8, 2).eval()
    data = tokens(5, 3)
    hidden = (torch.zeros(2, 3, 8), torch.zeros(2, 3, 8))
    plan = isscompress.discover(model, (data, hidden))
    assert sorted(plan.input_labels) == [1, 2]  # h0 and c0, the leaves after the tokens
    masked, dead = copy.deepcopy(model), (1, 4, 6)  # the same units of both layers: one kept list for every row
    with torch.no_grad():
        for group_set in (gs for gs in plan.group_sets if gs.kind == "recurrent"):  # the layer's units only
            for member in group_set.members:
                for start in member.starts:
                    for unit in dead:
                        dict(masked.named_parameters())[member.key].select(member.axis, start + unit).zero_()
    if carried:  # the fine-tuned model's own state from its last call: zero at every removed unit
        with torch.no_grad():
            hidden = masked(data, hidden)[1]
        assert float(hidden[1][..., list(dead)].abs().max()) == 0 and float(hidden[1].abs().max()) > 0
        foreign = tuple(h + 0.1 for h in hidden)  # not this model's state: refused, with the reason
        with pytest.raises(isscompress.errors.ShrinkError, match="holds non-zero values for units being removed"):
            isscompress.shrink_module(masked, (data, foreign), threshold=0.0)
    small = isscompress.shrink_module(masked, (data, hidden), threshold=0.0)
    kept = [u for u in range(8) if u not in dead]
    assert small.rnn.hidden_size == len(kept)
    with torch.no_grad():  # checked here: the state cut by hand
        expected, _ = masked.double()(data, tuple(h.double() for h in hidden))
        actual, _ = small.double()(data, tuple(h.double()[..., kept] for h in hidden))
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)


class StoredWidth(nn.Module):
    """h0 built from self.hidden_size (a width stored beside the layer), as many tutorials write it."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_size, self.num_layers = 8, 2
        self.lstm, self.fc = nn.LSTM(5, 8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size)
        return self.fc(self.lstm(x, (h0, h0.clone()))[0][:, -1, :])


class SameNumberOtherWidth(nn.Module):
    """self.hidden_size also sizes a projection that is not a recurrent width: it must stay as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_size = 8
        self.gru, self.mix, self.out = nn.GRU(5, 8, batch_first=True), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        mixed = torch.tanh(self.mix(self.gru(x)[0]))
        return self.out(mixed.contiguous().view(-1, self.hidden_size))


@pytest.mark.parametrize("model_class, stored", [(StoredWidth, 4), (SameNumberOtherWidth, 8)],
                         ids=["a width stored beside the layer", "the same number used for another width"])
def test_widths_stored_beside_the_layer_are_resized_only_when_the_check_needs_it(model_class, stored):
    torch.manual_seed(0)
    model = model_class()
    inputs = (torch.randn(3, 6, 5),)
    plan = isscompress.discover(model, inputs)
    masked, dead = copy.deepcopy(model), (0, 2, 5, 7)
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for group_set in (gs for gs in plan.group_sets if gs.kind == "recurrent"):  # the layer's units only
            for member in group_set.members:
                for start in member.starts:
                    for unit in dead:
                        params[member.key].select(member.axis, start + unit).zero_()
    small = isscompress.shrink_module(masked, inputs, threshold=0.0)
    assert small.hidden_size == stored
    fresh = (torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(3)),)
    for batch in (inputs, fresh):  # checked here, on the example inputs and on fresh ones
        torch.testing.assert_close(outputs64(small, batch)[0], outputs64(masked, batch)[0], rtol=1e-9, atol=1e-10)


class MaxPoolEncoder(nn.Module):
    """A BiLSTM sentence encoder that fills padding before max-pooling: with a lengths mask (masked_fill -inf) or,
    as InferSent version 2 writes it, with `x[x == 0] = -1e9`."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.emb, self.lstm, self.head = nn.Embedding(20, 5), nn.LSTM(5, 6, bidirectional=True), nn.Linear(12, 3)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(x), lengths, enforce_sorted=False)
        out = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0])[0]  # (time, batch, 12)
        if self.how == "lengths mask":
            pad = torch.arange(out.shape[0]).unsqueeze(1) >= lengths.unsqueeze(0)
            out = out.masked_fill(pad.unsqueeze(-1), float("-inf"))
        elif self.how == "x == 0":
            out = out.clone()
            out[out == 0] = -1e9
        pooled = out.max(0)[0]
        return self.head(pooled), pooled


@pytest.mark.parametrize("how", ["lengths mask", "x == 0"])
def test_padding_filled_before_a_max_pool_shrinks_exactly(how):
    torch.manual_seed(0)
    model, inputs = MaxPoolEncoder(how), (tokens(7, 3), torch.tensor([7, 4, 2]))
    plan = isscompress.discover(model, inputs)
    masked = zero_random_groups(model, plan, 5, 0.5)
    small = isscompress.shrink_module(masked, inputs, threshold=0.0)
    assert small.lstm.hidden_size < 6
    fresh = (tokens(9, 3, seed=4), torch.tensor([9, 9, 1]))
    for batch in (inputs, fresh):  # checked here: the head's scores on the example inputs and on fresh ones
        torch.testing.assert_close(outputs64(small, batch)[0], outputs64(masked, batch)[0], rtol=1e-9, atol=1e-10)


def test_columns_holding_a_fill_may_not_be_combined():
    torch.manual_seed(0)
    with pytest.raises(TraceError, match="reduces across hidden features in which a fill wrote"):
        isscompress.discover(_FillThenSum(), (tokens(7, 3), torch.tensor([7, 4, 2])))


class _FillThenSum(MaxPoolEncoder):
    def __init__(self) -> None:
        super().__init__("x == 0")

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(self.emb(x), lengths, enforce_sorted=False)
        out = nn.utils.rnn.pad_packed_sequence(self.lstm(packed)[0])[0].clone()
        out[out == 0] = -1e9
        return out.sum(-1)  # a removed unit's -1e9 would count: refused


def test_a_width_written_as_a_literal_is_refused_naming_the_module():
    class Literal(nn.Module):  # time_sequence_prediction's way: the state width written as a number
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.out = nn.LSTMCell(1, 6), nn.Linear(6, 1)

        def forward(self, x):
            h = c = torch.zeros(x.size(0), 6)
            for step in x.split(1, dim=1):
                h, c = self.cell(step, (h, c))
            return self.out(h)

    torch.manual_seed(0)
    model, inputs = Literal(), (torch.randn(3, 5),)
    masked = zero_random_groups(model, isscompress.discover(model, inputs), 1, 0.5)
    with pytest.raises(isscompress.errors.ShrinkError, match=r"in module `cell` \(LSTMCell\)"):
        isscompress.shrink_module(masked, inputs, threshold=0.0)


def test_outputs_written_step_by_step_into_a_buffer_shrink_exactly():
    class Buffer(nn.Module):  # outs = torch.zeros(T, B, H); outs[t] = h, as step-by-step decoders collect outputs
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.cell, self.out = nn.Embedding(20, 5), nn.GRUCell(5, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.zeros(x.shape[1], self.cell.hidden_size)
            outs = torch.zeros(x.shape[0], x.shape[1], self.cell.hidden_size)
            for t in range(x.shape[0]):
                h = self.cell(self.emb(x[t]), h)
                outs[t] = h
            return self.out(outs)

    torch.manual_seed(0)
    model, inputs = Buffer(), (tokens(5, 2),)
    masked = zero_random_groups(model, isscompress.discover(model, inputs), 2, 0.5)
    small = isscompress.shrink_module(masked, inputs, threshold=0.0)
    assert small.cell.hidden_size < 6
    for batch in (inputs, (tokens(8, 3, seed=9),)):
        torch.testing.assert_close(outputs64(small, batch)[0], outputs64(masked, batch)[0], rtol=1e-9, atol=1e-10)


def test_group_lasso_one_shot_removes_the_weakest_units_at_once_and_keeps_them_removed():
    model, inputs = ZOO["gru_tagger"]
    model = copy.deepcopy(model)
    plan = isscompress.discover(model, inputs)
    targets = {gs.name: 3 for gs in plan.group_sets if gs.kind == "recurrent"}
    before = isscompress.GroupLasso(model, plan, lam=1.0).norms()  # measured before anything is removed
    reg = isscompress.GroupLasso(model, plan, lam=1.0, method="one-shot", targets=targets)
    assert reg.widths() == targets
    for name, norms in reg.norms().items():
        assert {int(i) for i in (norms == 0).nonzero()} == set(before[name].argsort()[:3].tolist())
    with torch.no_grad():  # an optimizer step moves every weight; the removed units go back to zero
        for p in model.parameters():
            p.add_(0.01)
    reg.step(lr=0.1)
    assert reg.widths() == targets


def test_a_heads_multiply_adds_count_as_often_as_it_runs_per_time_step():
    """A tagger's head runs at every token, a classifier's once per sequence: the per-token count of a user model
    is its recurrent layers' plus each Linear's weights times its runs per time step of the first recurrent layer."""
    from isscompress.architectures.traced import TracedModel

    model, inputs = ZOO["attention_classifier"]  # 3 sequences of 7 tokens; score per token, out per sequence
    spec = TracedModel.of(model, isscompress.discover(model, inputs), inputs)
    lstm = sum(p.numel() for p in model.lstm.parameters() if p.dim() == 2)
    assert spec.macs_per_token() == {"recurrent": lstm, "other": round(12 * 1 + 12 * 3 / 7)}
    model, inputs = ZOO["mlp_tagger"]  # conv (3 taps) and both Linears at every token
    spec = TracedModel.of(model, isscompress.discover(model, inputs), inputs)
    assert spec.macs_per_token()["other"] == 5 * 6 * 3 + 7 * 4 + 3 * 4 + 3 * 10
    narrower = spec.with_kept({"fc1": 2})  # an MLP unit fewer: its row of fc1 and its column of out
    assert narrower.macs_per_token()["other"] == 5 * 6 * 3 + 2 * 4 + 3 * 4 + 3 * 5


class CaptionDecoder(nn.Module):
    """pytorch-tutorial's image-captioning sampler, in small: an image feature is the LSTM's first input, word
    embeddings the next ones. The LSTM's input columns read the embedding at some steps and the image at another."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.lstm, self.linear = nn.Embedding(20, 6), nn.LSTM(6, 5, batch_first=True), nn.Linear(5, 20)

    def forward(self, features):
        inputs, states, words = features.unsqueeze(1), None, []
        for _ in range(4):
            hiddens, states = self.lstm(inputs, states)
            word = self.linear(hiddens.squeeze(1)).argmax(1)
            words.append(word)
            inputs = self.embed(word).unsqueeze(1)
        return torch.stack(words, 1), states[0]


def test_a_column_read_by_a_width_and_by_other_values_stays_with_neither():
    """Found on pytorch-tutorial's DecoderRNN.sample: removing an embedding dimension would cut the LSTM's input
    column that also reads the image feature. The embedding is left whole, the LSTM still shrinks exactly."""
    torch.manual_seed(0)
    model, inputs = CaptionDecoder().eval(), (torch.randn(3, 6),)
    plan = isscompress.discover(model, inputs)
    assert [gs.name for gs in plan.group_sets] == ["lstm.l0"]
    masked = zero_random_groups(model, plan, 1, 0.5)
    small = isscompress.shrink_module(masked, inputs, threshold=0.0)
    assert small.lstm.hidden_size < 5 and small.embed.embedding_dim == 6
