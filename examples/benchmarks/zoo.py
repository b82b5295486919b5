"""A zoo of recurrent models that nobody here wrote, run through the any-model API as their users would, and
through Torch-Pruning beside it.

    git clone https://github.com/pytorch/examples          # at 77f55b912142e11fcfdf5b530231fb9c52f181e8
    git clone https://github.com/IBM/pytorch-seq2seq       # at f146087a9a271e9b50f46561e090324764b081fb
    git clone https://github.com/yunjey/pytorch-tutorial   # at 0500d3df5a2a8080ccfccbc00aca0eacc21818db
    git clone https://github.com/facebookresearch/InferSent  # at 31eede6b3543571951276cbbf7040b4f8479985a
    python examples/benchmarks/zoo.py --pytorch-examples examples --ibm-seq2seq pytorch-seq2seq \
        --yunjey-tutorial pytorch-tutorial --infersent InferSent

Model code is loaded from those checkouts unchanged (it is not part of this repository). pytorch-tutorial's
scripts train when run, so their model classes are taken from the file by name and nothing else of it runs;
mnist_rnn/main.py and image_captioning/model.py import torchvision at the top for data and a CNN their recurrent
parts never use: ``torchvision`` is stubbed. Each model is built small, followed by ``discover``, half the units of
every set zeroed the same way (as ISS leaves them), shrunk by ``shrink_module``, and its outputs compared by this
script with the masked model's — on the example inputs and on fresh inputs of the same shapes — or refused, with
the reason. With ``torch-pruning`` installed, each also goes through its ``MagnitudePruner`` as its README prunes a
classifier (half the channels, the output layer ignored). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import sys
import traceback
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import isscompress
from isscompress import IsscompressError

RECURRENT = (nn.RNNBase, nn.RNNCellBase)


@dataclass
class Case:
    name: str
    what: str
    build: Callable[[], tuple[nn.Module, Callable[[int], tuple], nn.Module]]  # model, inputs(seed), output layer
    call: str = "forward"  # the method the model's users call (a decoder's greedy `sample`, ...)
    own_inputs: Callable[[nn.Module, int], tuple] | None = None  # inputs built by the model's own code (init_hidden)


def stub_torchvision() -> None:
    if "torchvision" not in sys.modules:
        stub = types.ModuleType("torchvision")
        stub.datasets, stub.transforms, stub.models = (types.SimpleNamespace() for _ in range(3))
        sys.modules.update({"torchvision": stub, "torchvision.models": stub.models,
                            "torchvision.transforms": stub.transforms})


def load(path: Path) -> types.ModuleType:
    stub_torchvision()
    spec = importlib.util.spec_from_file_location("zoo_" + path.stem + str(abs(hash(path))), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def classes(path: Path, *names: str) -> types.SimpleNamespace:
    """Only the named classes of a script (it trains at import), run with torch, nn and a CPU ``device``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kept = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name in names]
    namespace: dict[str, Any] = {"torch": torch, "nn": nn, "device": torch.device("cpu"),
                                 "pack_padded_sequence": nn.utils.rnn.pack_padded_sequence}
    exec(compile(ast.Module(body=kept, type_ignores=[]), str(path), "exec"), namespace)
    return types.SimpleNamespace(**{name: namespace[name] for name in names})


def widths(model: nn.Module) -> list[int]:
    return [m.hidden_size for m in model.modules() if isinstance(m, RECURRENT)]


class Calling(nn.Module):
    """``model.<method>(*inputs)`` as a module's forward, so a decoder's sampling loop is what is followed."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs: Any) -> Any:
        return getattr(self.model, self.method)(*inputs)


def zero_half(model: nn.Module, plan, seed: int) -> nn.Module:
    masked, generator = copy.deepcopy(model), torch.Generator().manual_seed(seed)
    params = dict(masked.named_parameters())
    for group_set in plan.group_sets:
        dead = torch.randperm(group_set.size, generator=generator)[: group_set.size // 2].tolist()
        with torch.no_grad():
            for member in group_set.members:
                for start in member.starts:
                    for unit in dead:
                        params[member.key].select(member.axis, start + unit).zero_()
    return masked


def tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor a model returns, token ids included (a sampling loop's answer is its ids)."""
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


def isscompress_case(case: Case) -> str:
    model, inputs, _ = case.build()
    model = Calling(model, case.call) if case.call != "forward" else model
    example = inputs(0)
    try:
        plan = isscompress.discover(model, example)
        masked = zero_half(model, plan, 1)
        small = isscompress.shrink_module(masked, example, threshold=0.0)
    except IsscompressError as err:
        return "refused: " + " ".join(err.message.split())[:200].replace("|", "/")
    worst, compared = 0.0, 0
    for seed in (0, 7):  # the example inputs, and fresh ones of the same shapes (states passed in: zeros)
        big_inputs = inputs(seed)
        if case.own_inputs is not None:  # the shrunk model answers to its own code: small.init_hidden(4)
            small_inputs = case.own_inputs(small, seed)
        else:
            small_inputs = big_inputs if not plan.input_labels else shrink_zero_states(big_inputs, plan, small)
        with torch.no_grad():
            for a, b in zip(tensors(small(*small_inputs)), tensors(masked(*big_inputs))):
                if a.shape != b.shape and a.shape[:-1] == b.shape[:-1]:  # an output of hidden features: the kept ones
                    rows = b.reshape(-1, b.shape[-1])  # a removed unit's column is one constant (zero, or a fill)
                    b = b[..., (rows != rows[:1]).any(0)]
                if a.shape == b.shape:
                    worst, compared = max(worst, float((a.double() - b.double()).abs().max())), compared + 1
    if not compared or worst > 1e-4:
        return f"WRONG: largest difference {worst:.2g} over {compared} outputs"
    kept = isscompress.select_kept(isscompress.all_unit_norms(masked.state_dict(), plan.group_sets), plan.group_sets, 0)
    others = ", ".join(f"{gs.name} {gs.size} -> {len(kept[gs.name])}" for gs in plan.group_sets if gs.kind == "feature")
    return (f"shrunk exactly: widths {widths(model)} -> {widths(small)}" + (f" (and {others})" if others else "")
            + f", largest difference {worst:.1e} (example and fresh inputs)")


def shrink_zero_states(inputs: tuple, plan, small: nn.Module) -> tuple:
    """Zero states passed in, at the shrunk model's widths (the states these checks pass are zeros)."""
    leaves, spec = tree_flatten(inputs)
    new_width = widths(small)[0]
    for index in plan.input_labels:
        leaves[index] = torch.zeros(*leaves[index].shape[:-1], new_width, dtype=leaves[index].dtype)
    return torch.utils._pytree.tree_unflatten(leaves, spec)


def torch_pruning_case(case: Case) -> str:
    try:
        import torch_pruning as tp
    except ImportError:
        return "not installed"
    model, inputs, output_layer = case.build()
    before = widths(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MagnitudePruner(model, example_inputs=inputs(0),
                                               importance=tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                               ignored_layers=[output_layer],
                                               forward_fn=lambda m, x: getattr(m, case.call)(*x))
            pruner.step()
        with torch.no_grad():
            getattr(model, case.call)(*inputs(0))
    except Exception as err:  # what a user of that tool meets (a bare assert: the line that failed)
        said = " ".join(str(err).split()) or (traceback.extract_tb(err.__traceback__)[-1].line or "")
        return f"{type(err).__name__}: {said[:100]}".replace("|", "/")
    after = widths(model)
    if after == before:
        return f"no recurrent unit removed ({before})"
    return f"recurrent widths {before} -> {after}; runs (exactness not checked by the tool)"


def tokens(high: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(3, high, shape, generator=torch.Generator().manual_seed(seed))


def pytorch_examples(root: Path) -> list[Case]:
    def wlm(kind: str, tied: bool = False):
        def build():
            torch.manual_seed(0)
            model = load(root / "word_language_model/model.py").RNNModel(kind, 50, 10 if tied else 12, 10, 2,
                                                                         dropout=0.2, tie_weights=tied).eval()
            return model, lambda seed: (tokens(50, (7, 4), seed), model.init_hidden(4)), model.decoder
        return build

    def sequence():
        torch.manual_seed(0)
        model = load(root / "time_sequence_prediction/train.py").Sequence().double().eval()
        return model, lambda seed: (torch.randn(3, 8, dtype=torch.double, generator=torch.Generator().manual_seed(seed)),
                                    2), model.linear

    def mnist():
        torch.manual_seed(0)
        model = load(root / "mnist_rnn/main.py").Net().eval()
        return model, lambda seed: (torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(seed)),), model.fc2

    def own(model: nn.Module, seed: int) -> tuple:
        return tokens(50, (7, 4), seed), model.init_hidden(4)

    cases = [Case(f"pytorch/examples word_language_model ({kind})", "2 layers, called with init_hidden()", wlm(kind),
                  own_inputs=own) for kind in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")]
    return cases + [Case("pytorch/examples word_language_model (LSTM, tied)", "decoder tied to the embedding",
                         wlm("LSTM", True), own_inputs=own),
                    Case("pytorch/examples time_sequence_prediction", "2 LSTMCells in a loop, output fed back", sequence),
                    Case("pytorch/examples mnist_rnn", "LSTM -> BatchNorm1d -> MLP", mnist)]


def ibm_seq2seq(root: Path) -> list[Case]:
    sys.path.insert(0, str(root))
    from seq2seq.models import DecoderRNN, EncoderRNN, Seq2seq

    def seq2seq(cell: str, attention: bool, bidirectional: bool = False, lengths: bool = False):
        def build():
            torch.manual_seed(0)
            encoder = EncoderRNN(30, 10, 8, rnn_cell=cell, bidirectional=bidirectional, variable_lengths=lengths)
            decoder = DecoderRNN(30, 6, 16 if bidirectional else 8, sos_id=1, eos_id=2, rnn_cell=cell,
                                 use_attention=attention, bidirectional=bidirectional)
            model = Seq2seq(encoder, decoder).eval()
            return model, lambda seed: (tokens(30, (2, 7), seed), [7, 5] if lengths else None, None, 0.0), decoder.out
        return build

    variants = (("lstm", True, False, False), ("gru", True, False, False), ("lstm", False, False, False),
                ("gru", False, True, False), ("lstm", True, True, True), ("gru", True, False, True))
    return [Case(f"IBM pytorch-seq2seq ({cell}{', attention' if att else ''}{', bidirectional encoder' if bi else ''}"
                 f"{', packed lengths' if packed else ''})", "encoder state starts the decoder; greedy decoding loop",
                 seq2seq(cell, att, bi, packed)) for cell, att, bi, packed in variants]


def infersent(root: Path) -> list[Case]:
    def encoder(version: int):
        def build():
            torch.manual_seed(0)
            config = {"bsize": 4, "word_emb_dim": 6, "enc_lstm_dim": 8, "pool_type": "max", "dpout_model": 0.0,
                      "version": version}
            model = load(root / "models.py").InferSent(config).eval()
            lengths = __import__("numpy").array([7, 4, 6])
            return model, lambda seed: ((torch.randn(7, 3, 6, generator=torch.Generator().manual_seed(seed)),
                                         lengths),), model.enc_lstm
        return build

    what = {1: "BiLSTM over sorted packed sentences, max-pooled", 2: "the same, padding set to -1e9 before the max"}
    return [Case(f"InferSent (version {v})", what[v], encoder(v)) for v in (1, 2)]


def yunjey_tutorial(root: Path) -> list[Case]:
    base = root / "tutorials"

    def classifier(folder: str, name: str):
        def build():
            torch.manual_seed(0)
            model = getattr(classes(base / f"02-intermediate/{folder}/main.py", name), name)(6, 8, 2, 5).eval()
            return model, lambda seed: (torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(seed)),), model.fc
        return build

    def rnnlm():
        torch.manual_seed(0)
        model = classes(base / "02-intermediate/language_model/main.py", "RNNLM").RNNLM(40, 8, 10, 2).eval()
        return model, lambda seed: (tokens(40, (3, 6), seed), (torch.zeros(2, 3, 10), torch.zeros(2, 3, 10))), model.linear

    def captioning(method: str):
        def build():
            torch.manual_seed(0)
            model = load(base / "03-advanced/image_captioning/model.py").DecoderRNN(8, 10, 40, 1, max_seq_length=5).eval()
            features = lambda seed: torch.randn(3, 8, generator=torch.Generator().manual_seed(seed))  # noqa: E731
            if method == "sample":
                return model, lambda seed: (features(seed),), model.linear
            return model, lambda seed: (features(seed), tokens(40, (3, 5), seed), [6, 4, 3]), model.linear
        return build

    return [Case("pytorch-tutorial recurrent_neural_network RNN", "LSTM classifier, h0 from self.hidden_size",
                 classifier("recurrent_neural_network", "RNN")),
            Case("pytorch-tutorial bidirectional_recurrent_neural_network BiRNN", "bidirectional, h0 from self.hidden_size",
                 classifier("bidirectional_recurrent_neural_network", "BiRNN")),
            Case("pytorch-tutorial language_model RNNLM", "2 layers, state passed in", rnnlm),
            Case("pytorch-tutorial image_captioning DecoderRNN", "image feature + packed captions", captioning("forward")),
            Case("pytorch-tutorial image_captioning DecoderRNN.sample", "greedy loop, state carried, argmax fed back",
                 captioning("sample"), call="sample")]


def main(argv: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pytorch-examples", type=Path, help="a checkout of github.com/pytorch/examples")
    parser.add_argument("--ibm-seq2seq", type=Path, help="a checkout of github.com/IBM/pytorch-seq2seq")
    parser.add_argument("--yunjey-tutorial", type=Path, help="a checkout of github.com/yunjey/pytorch-tutorial")
    parser.add_argument("--infersent", type=Path, help="a checkout of github.com/facebookresearch/InferSent")
    args = parser.parse_args(argv)
    cases = ((pytorch_examples(args.pytorch_examples) if args.pytorch_examples else [])
             + (ibm_seq2seq(args.ibm_seq2seq) if args.ibm_seq2seq else [])
             + (yunjey_tutorial(args.yunjey_tutorial) if args.yunjey_tutorial else [])
             + (infersent(args.infersent) if args.infersent else []))
    rows = [(case.name, case.what, isscompress_case(case), torch_pruning_case(case)) for case in cases]
    exact = sum(row[2].startswith("shrunk exactly") for row in rows)
    print(f"{exact} of {len(rows)} shrunk exactly\n")
    print("| model | what it does | isscompress | Torch-Pruning |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return rows


if __name__ == "__main__":
    main()
