"""Shared tensors are found one way everywhere (isscompress.tensors): the same storage and overlapping bytes, as
safetensors finds them. Views of one weight are shared; slices side by side, and clones, are not."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn

from isscompress.anymodel.sharing import parameter_names, shared_names
from isscompress.io.files import write_checkpoint
from isscompress.io.metadata import Metadata
from isscompress.tensors import overlap, same_view, shared_aliases


def test_overlap_is_shared_bytes_not_a_shared_storage() -> None:
    base = torch.arange(12.0)
    first, second, middle = base[:6], base[6:], base[4:8]
    assert not overlap(first, second)  # one storage, bytes side by side: safetensors stores both
    assert overlap(first, middle) and overlap(middle, second)
    assert overlap(base.view(3, 4), base.view(3, 4).t())
    assert not same_view(base.view(3, 4), base.view(3, 4).t())  # shared, but a slice of one is not that of the other
    assert same_view(base.view(3, 4), base.view(3, 4))
    assert not overlap(base, base.clone())
    assert shared_aliases([("a", first), ("b", second), ("c", middle), ("d", base)]) == {"c": "a", "d": "a"}


class _TiedByView(nn.Module):
    """A decoder whose weight is a second Parameter object over the embedding's bytes (not the same object)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(5, 3)
        self.decoder = nn.Linear(3, 5)
        self.decoder.weight = nn.Parameter(self.encoder.weight.data)


def test_a_tie_through_a_second_parameter_object_is_found_like_a_tie_through_one() -> None:
    model = _TiedByView()
    assert shared_names(model) == {"decoder.weight": "encoder.weight"}
    names = parameter_names(model)
    assert names[id(model.decoder.weight)] == names[id(model.encoder.weight)] == ["encoder.weight", "decoder.weight"]
    assert names[id(model.decoder.bias)] == ["decoder.bias"]


def test_the_writer_stores_each_name_of_a_shared_tensor_as_its_own_bytes(tmp_path) -> None:
    model = _TiedByView()
    base = torch.arange(8.0)
    tensors = {**model.state_dict(), "left": base[:4], "right": base[4:]}
    write_checkpoint(tmp_path / "m.safetensors", tensors, Metadata())
    read = load_file(tmp_path / "m.safetensors")
    assert torch.equal(read["decoder.weight"], model.encoder.weight.detach())
    assert torch.equal(read["left"], base[:4]) and torch.equal(read["right"], base[4:])
