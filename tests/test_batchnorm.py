"""BatchNorm between recurrent layers (#34): in inference a per-feature scale and shift, so a unit's feature maps to
itself. Its weight and bias join the unit's group (zeroed with it, the output is exactly zero) and its running
statistics are carried: cut by a shrink, in no norm.

The stand-in has the shape of deepspeech.pytorch's DeepSpeech2 (SeanNaren/deepspeech.pytorch@b88a631,
deepspeech_pytorch/model.py): BatchRNN layers whose input goes through ``SequenceWise(nn.BatchNorm1d)`` on a
``(T*N, H)`` view, packed sequences, the two directions summed, and a BatchNorm before the output layer."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import isscompress
from isscompress.anymodel import TraceError
from isscompress.core.groups import all_unit_norms
from isscompress.core.surgery import mask_state_dict


class SequenceWise(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        t, n = x.size(0), x.size(1)
        return self.module(x.view(t * n, -1)).view(t, n, -1)


class BatchRNN(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, batch_norm: bool = True, affine: bool = True) -> None:
        super().__init__()
        self.batch_norm = SequenceWise(nn.BatchNorm1d(input_size, affine=affine)) if batch_norm else None
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True)

    def forward(self, x, lengths):
        if self.batch_norm is not None:
            x = self.batch_norm(x)
        x, _ = self.rnn(nn.utils.rnn.pack_padded_sequence(x, lengths))
        x, _ = nn.utils.rnn.pad_packed_sequence(x)
        return x.view(x.size(0), x.size(1), 2, -1).sum(2).view(x.size(0), x.size(1), -1)  # the directions summed


class Speech(nn.Module):
    def __init__(self, features: int = 7, hidden: int = 6, classes: int = 5, affine: bool = True) -> None:
        super().__init__()
        self.rnns = nn.ModuleList([BatchRNN(features, hidden, False), BatchRNN(hidden, hidden, affine=affine),
                                   BatchRNN(hidden, hidden)])
        self.fc = SequenceWise(nn.Sequential(nn.BatchNorm1d(hidden), nn.Linear(hidden, classes, bias=False)))

    def forward(self, x, lengths):
        for rnn in self.rnns:
            x = rnn(x, lengths)
        return self.fc(x)


def _trained(model: Speech) -> Speech:
    """Running statistics away from their (0, 1) start, affine parameters away from (1, 0)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 4, 7) * 3 + 1, torch.tensor([8, 7, 5, 3]))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d) and module.affine:
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-1.0, 1.0)
    return model.eval()


INPUTS = (torch.randn(8, 4, 7, generator=torch.Generator().manual_seed(3)), torch.tensor([8, 6, 5, 2]))


def _kept(plan, drop: dict[str, int]) -> dict[str, torch.Tensor]:
    keys = {gs.name: gs.width_key for gs in plan.group_sets}
    return {gs.name: torch.arange(gs.size - drop.get(keys[gs.name], 0)) for gs in plan.group_sets}


def test_batchnorm_between_layers_joins_the_units_groups_and_its_statistics_are_carried() -> None:
    torch.manual_seed(0)
    model = _trained(Speech())
    plan = isscompress.discover(model, INPUTS)
    second = next(gs for gs in plan.group_sets if gs.name.startswith("rnns.0.rnn"))
    assert {(m.key, m.axis) for m in second.members} >= {("rnns.1.batch_norm.module.weight", 0),
                                                          ("rnns.1.batch_norm.module.bias", 0)}
    assert {m.key for m in second.carried} == {"rnns.1.batch_norm.module.running_mean",
                                                "rnns.1.batch_norm.module.running_var"}
    # the statistics are in no norm: a unit whose weights are all zero has norm 0, whatever its running variance
    state = mask_state_dict(model.state_dict(), plan.group_sets, _kept(plan, {second.width_key: 2}))
    assert float(model.state_dict()["rnns.1.batch_norm.module.running_var"][-1]) > 0.1
    assert torch.equal(state["rnns.1.batch_norm.module.running_var"], model.state_dict()[
        "rnns.1.batch_norm.module.running_var"])  # a mask zeroes the weights only
    norms = all_unit_norms(state, plan.group_sets)[second.name]
    assert float(norms[-2:].abs().max()) == 0.0 and bool((norms[:-2] > 0).all())


def test_a_model_with_batchnorm_between_layers_shrinks_exactly_in_eval_and_in_training_mode() -> None:
    torch.manual_seed(1)
    model = _trained(Speech())
    plan = isscompress.discover(model, INPUTS)
    drop = {key: index + 1 for index, key in enumerate(dict.fromkeys(gs.width_key for gs in plan.group_sets
                                                                       if gs.kind == "recurrent"))}
    kept = _kept(plan, drop)
    masked = Speech()
    masked.load_state_dict(mask_state_dict(model.state_dict(), plan.group_sets, kept))
    small = isscompress.shrink_module(masked.eval(), INPUTS, threshold=0.0, plan=plan)  # checked in float64
    norms = [m for m in small.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [bn.num_features for bn in norms] == [5, 4, 3]
    assert torch.equal(norms[0].running_mean, model.rnns[1].batch_norm.module.running_mean[:5])
    x = torch.randn(11, 3, 7, generator=torch.Generator().manual_seed(9))
    lengths = torch.tensor([11, 9, 4])
    with torch.no_grad():
        torch.testing.assert_close(small(x, lengths), masked(x, lengths), rtol=0, atol=1e-5)
        masked.train(), small.train()  # batch statistics are per feature too: a removed feature stays zero
        torch.testing.assert_close(small(x, lengths), masked(x, lengths), rtol=0, atol=1e-5)


def test_batchnorm_without_affine_parameters_is_refused_by_name() -> None:
    torch.manual_seed(0)
    with pytest.raises(TraceError, match=r"`batch_norm` without affine parameters \(affine=False\)"):
        isscompress.discover(_trained(Speech(affine=False)), INPUTS)


def test_the_groups_file_keeps_what_is_carried(tmp_path) -> None:
    torch.manual_seed(0)
    model = _trained(Speech())
    plan = isscompress.discover(model, INPUTS)
    plan.save(tmp_path / "groups.yaml")
    loaded = isscompress.load_groups(tmp_path / "groups.yaml", model.state_dict())
    assert [gs.carried for gs in loaded.group_sets] == [gs.carried for gs in plan.group_sets]
    assert any(gs.carried for gs in loaded.group_sets)


FACTORY = '''
import torch
from test_batchnorm import Speech, _trained

def make():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 7, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([8, 6, 5, 2])
    batches = [(torch.randn(8, 4, 7, generator=torch.Generator().manual_seed(s)), lengths) for s in range(6)]
    return Speech(), (x, lengths), batches
'''


def test_finetune_shrink_and_report_through_the_command_line_path(tmp_path) -> None:
    (tmp_path / "speech.py").write_text(FACTORY)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in _trained(Speech()).state_dict().items()}, str(tmp_path / "m.st"))
    (tmp_path / "r.yaml").write_text("finetune: {epochs: 2, lr: 0.003, optimizer: adam}\niss: {target: {macs: 0.5}}\n"
                                     "distill: {alpha: 1.0}\n")
    arch = f"{tmp_path / 'speech.py'}:make"
    isscompress.finetune(tmp_path / "m.st", tmp_path / "r.yaml", tmp_path / "tuned.safetensors", arch=arch)
    small = isscompress.shrink(tmp_path / "tuned.safetensors", tmp_path / "small.safetensors", 1e-4, arch=arch)
    assert small.max_abs_diff < 1e-6
    report = isscompress.report(tmp_path / "m.st", tmp_path / "small.safetensors", arch=arch, speed=False)
    assert report.mac_ratio >= 2.0
    assert all(after < before for name, (before, after) in report.widths.items() if name.startswith("rnns"))


class Lookahead(nn.Module):
    """DeepSpeech2's lookahead for unidirectional layers: a depthwise convolution over the next ``context`` steps,
    padded by ``F.pad(x, pad=..., value=0)`` (the widths given by name)."""

    def __init__(self, features: int, context: int = 3) -> None:
        super().__init__()
        self.pad = (0, context - 1)
        self.conv = nn.Conv1d(features, features, kernel_size=context, groups=features, bias=False)

    def forward(self, x):
        x = nn.functional.pad(x.transpose(0, 1).transpose(1, 2), pad=self.pad, value=0)
        return self.conv(x).transpose(1, 2).transpose(0, 1).contiguous()


class Unidirectional(nn.Module):
    def __init__(self, features: int = 7, hidden: int = 6, classes: int = 5) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden)
        self.norm = SequenceWise(nn.BatchNorm1d(hidden))
        self.lookahead = nn.Sequential(Lookahead(hidden), nn.Hardtanh(0, 20))
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc(self.lookahead(self.norm(self.lstm(x)[0])))


def test_a_depthwise_convolution_maps_each_unit_to_itself_and_shrinks_with_it() -> None:
    torch.manual_seed(2)
    model = Unidirectional()
    with torch.no_grad():
        model.train()(torch.randn(9, 4, 7))
    model.eval()
    x = torch.randn(9, 4, 7, generator=torch.Generator().manual_seed(5))
    plan = isscompress.discover(model, (x,), features=False)
    (layer,) = plan.group_sets
    assert ("lookahead.0.conv.weight", 0) in {(m.key, m.axis) for m in layer.members}
    kept = {layer.name: torch.tensor([0, 2, 3, 5])}
    masked = Unidirectional()
    masked.load_state_dict(mask_state_dict(model.state_dict(), plan.group_sets, kept))
    small = isscompress.shrink_module(masked.eval(), (x,), threshold=0.0, plan=plan)
    assert (small.lookahead[0].conv.groups, small.lookahead[0].conv.weight.shape) == (4, (4, 1, 3))
    fresh = torch.randn(12, 2, 7, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(small(fresh), masked(fresh), rtol=0, atol=1e-5)


@pytest.mark.parametrize("counter", [torch.tensor([3, 4]), torch.tensor(-1), torch.tensor(2.5)])
def test_only_a_batchnorm_counter_is_read_as_an_integer(tmp_path, counter) -> None:
    from isscompress.errors import CheckpointError
    from isscompress.io.files import read_checkpoint

    path = tmp_path / "m.safetensors"
    save_file({"lstm.weight_ih_l0": torch.zeros(8, 3), "norm.num_batches_tracked": counter}, str(path))
    if counter.is_floating_point():  # a float under that name is a weight like any other
        assert read_checkpoint(path).tensors["norm.num_batches_tracked"].dtype == torch.float32
        return
    with pytest.raises(CheckpointError, match="'norm.num_batches_tracked' has dtype torch.int64"):
        read_checkpoint(path)
    save_file({"lstm.weight_ih_l0": torch.zeros(8, 3), "norm.num_batches_tracked": torch.tensor(7)}, str(path))
    assert int(read_checkpoint(path).tensors["norm.num_batches_tracked"]) == 7
