"""A multi-layer ``nn.LSTM``/``nn.GRU``/``nn.RNN`` as a stack of single-layer ones, so each layer can have its own width.

``nn.LSTM(num_layers=3)`` holds one ``hidden_size`` for all of its layers, so ISS on it can only narrow them in
step (every layer to the width the widest need leaves). :class:`LayerwiseRNN` computes exactly what the module it
replaces computes — the same layers, the dropout between them in training, packed sequences, initial states — but
each layer is its own single-layer module, and after a shrink each has the width its units earned.

The one difference a caller can see: the final states. While the layers are of one width they are stacked into one
tensor ``[layers * directions, batch, width]`` as PyTorch's module returns them; once widths differ no tensor can hold
them, so they come back as a list of one ``[batch, width]`` tensor per layer and direction, in the same order (so
``h_n[-1]`` still means the last layer's last direction).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

# A layer's parameters in PyTorch's naming, without the layer index (weight_hr only with proj_size)
_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
SPLITTABLE = (nn.LSTM, nn.GRU, nn.RNN)


class LayerwiseRNN(nn.Module):
    """``layers`` single-layer modules of one class (``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``) run in turn, with
    ``dropout`` between them in training, as the multi-layer module they came from (:meth:`of`)."""

    def __init__(self, layers: list[nn.RNNBase], dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout = dropout

    @classmethod
    def of(cls, module: nn.RNNBase) -> "LayerwiseRNN":
        """The same computation as ``module``, its weights copied (``weight_ih_l1`` -> ``layers.1.weight_ih_l0``)."""
        if type(module) not in SPLITTABLE:
            raise TypeError(f"{type(module).__name__} is not nn.LSTM, nn.GRU or nn.RNN")
        like = next(module.parameters())
        layers = []
        for index in range(module.num_layers):
            width_in = module.input_size if index == 0 else (module.proj_size or module.hidden_size) * (
                2 if module.bidirectional else 1)
            kwargs: dict[str, Any] = dict(input_size=width_in, hidden_size=module.hidden_size, num_layers=1,
                                          bias=module.bias, batch_first=module.batch_first,
                                          bidirectional=module.bidirectional, device=like.device, dtype=like.dtype)
            if type(module) is nn.LSTM:
                kwargs["proj_size"] = module.proj_size
            if type(module) is nn.RNN:
                kwargs["nonlinearity"] = module.nonlinearity
            layer = type(module)(**kwargs)
            with torch.no_grad():
                for name, value in layer.named_parameters():  # weight_ih_l0[_reverse] <- weight_ih_l{index}[_reverse]
                    value.copy_(getattr(module, name.replace("_l0", f"_l{index}", 1)))
            layer.train(module.training)
            layers.append(layer)
        split = cls(layers, module.dropout)
        split.train(module.training)
        return split

    # What code around the module reads from it, as it read it from the multi-layer module
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def hidden_size(self) -> int:
        """The last layer's width: what the output's features are made of."""
        return self.layers[-1].hidden_size

    @property
    def proj_size(self) -> int:
        return getattr(self.layers[-1], "proj_size", 0)

    @property
    def bidirectional(self) -> bool:
        return self.layers[0].bidirectional

    @property
    def batch_first(self) -> bool:
        return self.layers[0].batch_first

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _initial(self, hx: Any, index: int) -> Any:
        """Layer ``index``'s share of the caller's initial state (stacked as PyTorch's module takes it, or a list
        per layer and direction, as this module returns it)."""
        if hx is None:
            return None
        if isinstance(hx, tuple):
            return tuple(self._initial(part, index) for part in hx)
        rows = slice(index * self.directions, (index + 1) * self.directions)
        if isinstance(hx, list):
            return torch.stack(hx[rows])
        return hx[rows]

    def _between(self, output: Any) -> Any:
        """The multi-layer module's dropout on a layer's output before the next layer reads it."""
        if not self.dropout or not self.training:
            return output
        if isinstance(output, PackedSequence):
            return output._replace(data=nn.functional.dropout(output.data, self.dropout, True))
        return nn.functional.dropout(output, self.dropout, True)

    def forward(self, input: Any, hx: Any = None) -> tuple[Any, Any]:  # noqa: A002 - PyTorch's own argument name
        output, finals = input, []
        for index, layer in enumerate(self.layers):
            if index:
                output = self._between(output)
            output, final = layer(output, self._initial(hx, index))
            finals.append(final)
        if isinstance(finals[0], tuple):  # an LSTM: (h_n, c_n)
            return output, tuple(_stacked([final[part] for final in finals]) for part in range(2))
        return output, _stacked(finals)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}" if self.dropout else ""


def _stacked(per_layer: list[Tensor]) -> Tensor | list[Tensor]:
    """One tensor, as the multi-layer module returns its final states, while the layers are of one width; else one
    tensor per layer and direction."""
    if len({tuple(t.shape) for t in per_layer}) == 1:
        return torch.cat(per_layer, 0)
    return [row for t in per_layer for row in t.unbind(0)]
