"""A zoo of recurrent models that nobody here wrote, run through the any-model API as their users would.

    git clone https://github.com/pytorch/examples && git -C examples checkout 77f55b912142e11fcfdf5b530231fb9c52f181e8
    python examples/benchmarks/zoo.py --pytorch-examples examples

Each model file is loaded from that checkout unchanged (its code is not part of this repository); each model is
built small, followed by ``discover``, about half the units of every set zeroed, shrunk by ``shrink_module``, and
the outputs compared by this script itself — on the example inputs and on fresh inputs of the same shapes — or
refused, and the reason printed. Stubbed: ``torchvision`` for mnist_rnn/main.py (imported at its top for data
loaders; forward never uses it). Prints a Markdown table: model, what it does, result.

Beside it, when ``torch-pruning`` is installed (``pip install torch-pruning``), the same models go through
Torch-Pruning's ``MagnitudePruner`` as its README prunes a classifier (half the channels, the output layer ignored),
and the table says what it did to the recurrent layers and whether the pruned model still runs.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import types
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import isscompress
from isscompress.errors import IsscompressError

COMMIT = "77f55b912142e11fcfdf5b530231fb9c52f181e8"


def load(root: Path, relative: str) -> types.ModuleType:
    if "torchvision" not in sys.modules:
        stub = types.ModuleType("torchvision")
        stub.datasets, stub.transforms = types.SimpleNamespace(), types.SimpleNamespace()
        sys.modules["torchvision"] = stub
    name = "zoo_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, root / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def zero_half(model: nn.Module, plan, seed: int) -> nn.Module:
    """A copy with the same half of the units zeroed in every set (as ISS leaves them)."""
    masked, generator = copy.deepcopy(model), torch.Generator().manual_seed(seed)
    params = dict(masked.named_parameters())
    size = plan.group_sets[0].size
    dead = torch.randperm(size, generator=generator)[: size // 2].tolist()
    with torch.no_grad():
        for group_set in plan.group_sets:
            for member in group_set.members:
                for start in member.starts:
                    for unit in dead:
                        if unit < group_set.size:
                            params[member.key].select(member.axis, start + unit).zero_()
    return masked


def word_language_model(root: Path, rnn_type: str, tied: bool = False) -> Callable[[], str]:
    def case() -> str:
        wlm = load(root, "word_language_model/model.py")
        torch.manual_seed(0)
        model = wlm.RNNModel(rnn_type, 50, 10 if tied else 12, 10, 2, dropout=0.2, tie_weights=tied).eval()
        data = torch.randint(0, 50, (7, 4))
        plan = isscompress.discover(model, (data, model.init_hidden(4)))  # as main.py calls it
        masked = zero_half(model, plan, 1)
        small = isscompress.shrink_module(masked, (data, model.init_hidden(4)), threshold=0.0)
        small.nhid = small.rnn.hidden_size  # init_hidden reads nhid: the one line a user's code changes
        worst = 0.0
        for tokens in (data, torch.randint(0, 50, (9, 4), generator=torch.Generator().manual_seed(5))):
            with torch.no_grad():
                expected, _ = masked(tokens, masked.init_hidden(4))
                actual, _ = small(tokens, small.init_hidden(4))
            worst = max(worst, float((actual - expected).abs().max()))
        assert worst < 1e-5, worst
        return (f"shrunk exactly: width 10 -> {small.rnn.hidden_size}, largest difference {worst:.1e} (example and "
                "fresh inputs)")
    return case


def wlm_build(root: Path, rnn_type: str, tied: bool = False) -> Callable[[], tuple[nn.Module, tuple, nn.Module]]:
    def build() -> tuple[nn.Module, tuple, nn.Module]:
        torch.manual_seed(0)
        model = load(root, "word_language_model/model.py").RNNModel(rnn_type, 50, 10 if tied else 12, 10, 2,
                                                                      dropout=0.2, tie_weights=tied).eval()
        return model, (torch.randint(0, 50, (7, 4)), model.init_hidden(4)), model.decoder
    return build


def time_sequence(root: Path) -> Callable[[], str]:
    def case() -> str:
        module = load(root, "time_sequence_prediction/train.py")
        torch.manual_seed(0)
        model = module.Sequence().double().eval()
        inputs = (torch.randn(3, 8, dtype=torch.double), 2)  # 8 steps, then 2 fed back
        plan = isscompress.discover(model, inputs)
        isscompress.shrink_module(zero_half(model, plan, 2), inputs, threshold=0.0)
        return "shrunk"
    return case


def mnist_rnn(root: Path) -> Callable[[], str]:
    def case() -> str:
        model = load(root, "mnist_rnn/main.py").Net().eval()
        isscompress.discover(model, (torch.randn(2, 1, 28, 28),))
        return "followed"
    return case


RECURRENT_TYPES = (nn.RNNBase, nn.RNNCellBase)


def widths(model: nn.Module) -> list[int]:
    return [m.hidden_size for m in model.modules() if isinstance(m, RECURRENT_TYPES)]


def torch_pruning(build: Callable[[], tuple[nn.Module, tuple, nn.Module]]) -> str:
    """Torch-Pruning on the same model: MagnitudePruner, half the channels, the output layer ignored."""
    try:
        import torch_pruning as tp
    except ImportError:
        return "not installed"
    import warnings

    model, inputs, output_layer = build()
    before = widths(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MagnitudePruner(model, example_inputs=inputs, importance=tp.importance.MagnitudeImportance(),
                                               pruning_ratio=0.5, ignored_layers=[output_layer])
            pruner.step()
        after = widths(model)
        with torch.no_grad():
            model(*inputs)
    except Exception as err:  # what a user of that tool meets
        return f"{type(err).__name__}: {' '.join(str(err).split())[:120]}".replace("|", "/")
    if after == before:
        return f"recurrent widths unchanged ({before}): no recurrent unit removed"
    return f"recurrent widths {before} -> {after}; runs (exactness not checked by the tool)"


def main(argv: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pytorch-examples", type=Path, required=True,
                        help=f"a checkout of github.com/pytorch/examples at {COMMIT[:12]}")
    args = parser.parse_args(argv)
    root = args.pytorch_examples

    def sequence_build() -> tuple[nn.Module, tuple, nn.Module]:
        model = load(root, "time_sequence_prediction/train.py").Sequence().double().eval()
        return model, (torch.randn(3, 8, dtype=torch.double), 2), model.linear

    def mnist_build() -> tuple[nn.Module, tuple, nn.Module]:
        model = load(root, "mnist_rnn/main.py").Net().eval()
        return model, (torch.randn(2, 1, 28, 28),), model.fc2

    cases = [(f"word_language_model RNNModel({kind})", "nn.%s x2, called with init_hidden()" % kind.split("_")[0],
              word_language_model(root, kind), wlm_build(root, kind)) for kind in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")]
    cases += [("word_language_model RNNModel(LSTM, tie_weights)", "decoder tied to the embedding",
               word_language_model(root, "LSTM", tied=True), wlm_build(root, "LSTM", tied=True)),
              ("time_sequence_prediction Sequence", "2 LSTMCells in a loop, output fed back", time_sequence(root),
               sequence_build),
              ("mnist_rnn Net", "LSTM -> BatchNorm1d -> MLP", mnist_rnn(root), mnist_build)]
    rows = []
    for name, what, case, build in cases:
        try:
            result = case()
        except IsscompressError as err:
            result = "refused: " + " ".join(err.message.split())[:220].replace("|", "/")
        rows.append((name, what, result, torch_pruning(build)))
    exact = sum(row[2].startswith("shrunk exactly") for row in rows)
    print(f"pytorch/examples at {COMMIT[:12]}: {exact} of {len(rows)} shrunk exactly\n")
    print("| model | what it does | isscompress | Torch-Pruning |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return rows


if __name__ == "__main__":
    main()
