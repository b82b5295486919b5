"""A runnable model for any ModelSpec: embedding, a stack of single-layer RNNs, decoder.

A stack of single-layer ``nn.LSTM``/``nn.GRU``/``nn.RNN`` modules is what lets every layer have
its own width after shrinking (``nn.LSTM(num_layers=2)`` forces one width for all layers).
Its ``state_dict`` keys are exactly the canonical layout of :mod:`isscompress.architectures.stack`.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from .stack import ModelSpec, check_shapes

Hidden = list  # one entry per layer: a tensor, or an (h, c) tuple for LSTM


def _make_layer(spec: ModelSpec, index: int) -> nn.Module:
    layer = spec.layers[index]
    return spec.cell_kind.make(layer, spec.bias, spec.bidirectional)


def _embedding(vocab_size: int, dim: int) -> nn.Embedding:
    """nn.Embedding, initialised only off the meta device (normal_ on meta imports torch._dynamo: +2.6 s)."""
    weight = torch.empty(vocab_size, dim)
    if weight.device.type != "meta":
        nn.init.normal_(weight)
    return nn.Embedding(vocab_size, dim, _weight=weight)


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani; Zilly et al. for RHNs): one mask per sequence window, the same
    at every time step, over ``[T, B, F]`` activations."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        return x * (torch.bernoulli(x.new_full((1, *x.shape[1:]), keep)) / keep)


def _dropout(p: float, variational: bool) -> nn.Module:
    if p <= 0:
        return nn.Identity()  # p=0 dropout still costs a pass
    return LockedDropout(p) if variational else nn.Dropout(p)


class RecurrentModel(nn.Module):
    """Sequence-first recurrent model. Language models take token ids ``[T, B]`` and return
    logits ``[T, B, V]``; bare stacks take features ``[T, B, I]`` and return ``[T, B, D*H]``."""

    def __init__(self, spec: ModelSpec, dropout: float = 0.0, variational: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.drop = _dropout(dropout, variational)  # on the embedding and on every layer's output
        self.encoder = _embedding(spec.vocab_size, spec.layers[0].input_size) if spec.is_language_model else None
        self.layers = nn.ModuleList(_make_layer(spec, i) for i in range(len(spec.layers)))
        for layer in self.layers:  # a layer with variational dropout on its recurrent state (RHN) takes it too
            if hasattr(layer, "state_dropout"):
                layer.state_dropout = dropout
        self.decoder = None
        if spec.is_language_model:
            self.decoder = nn.Linear(spec.output_size, spec.decoder_size, bias=spec.decoder_bias)
            if spec.tied:
                self.decoder.weight = self.encoder.weight

    def forward(self, inputs: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        x = self.drop(self.encoder(inputs)) if self.encoder is not None else inputs
        new_hidden: Hidden = []
        for index, layer in enumerate(self.layers):
            x, state = layer(x, None if hidden is None else hidden[index])
            new_hidden.append(state)
            if index + 1 < len(self.layers) or self.decoder is not None:
                x = self.drop(x)
        if self.decoder is not None:
            x = self.decoder(x)
        return x, new_hidden

    def canonical_state(self) -> dict[str, Tensor]:
        """The state dict in the canonical layout (a tied decoder weight is not repeated)."""
        state = self.state_dict()
        if self.spec.tied:
            state.pop("decoder.weight")
        return state


def build_model(spec: ModelSpec, state: Mapping[str, Tensor], dropout: float = 0.0,
                variational: bool = False) -> RecurrentModel:
    """A RecurrentModel whose parameters *are* the tensors of ``state`` (no copy), in eval mode."""
    check_shapes(state, spec)
    with torch.device("meta"):
        model = RecurrentModel(spec, dropout, variational)
    full = dict(state)
    if spec.tied:
        full["decoder.weight"] = state["encoder.weight"]
    model.load_state_dict(full, strict=True, assign=True)
    if spec.tied:
        model.decoder.weight = model.encoder.weight
    for layer in model.layers:
        if hasattr(layer, "flatten_parameters"):  # PyTorch's layers; a cell of our own may not have it
            layer.flatten_parameters()
    return model.eval()


def initialised_model(spec: ModelSpec, dropout: float = 0.0, variational: bool = False) -> RecurrentModel:
    """A new model to train from scratch, initialised as pytorch/examples' word_language_model's init_weights does."""
    model = RecurrentModel(spec, dropout=dropout, variational=variational)
    with torch.no_grad():
        model.encoder.weight.uniform_(-0.1, 0.1)
        if not spec.tied:
            model.decoder.weight.uniform_(-0.1, 0.1)
        if model.decoder.bias is not None:
            model.decoder.bias.zero_()
    return model
