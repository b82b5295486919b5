"""Benchmark: ISS against the alternatives on Penn Treebank, side by side.

For each compression level (ISS target widths, one per layer), on a trained PTB baseline:
  iss-proximal, iss-subgradient   fine-tune with ISS, shrink, recover (isscompress run)
  direct                          a model of exactly the widths ISS found, trained from scratch for the same epochs
  one-shot                        remove the baseline's lowest-norm ISS groups down to those widths, then recover
  torch-ao-saliency               torch.ao's LSTMSaliencyPruner as it ships, to the closest width it can express,
                                  then the same recovery
  unstructured-l1                 magnitude pruning to the same number of non-zero weights (no recovery)
Each finished point is kept in --output/points/, so an interrupted run picks up where it stopped. The table goes
into docs/results.md (between the NAME-benchmark markers) and the plot into docs/NAME-benchmark.png.

    python examples/benchmarks/ptb.py [--model M] [--levels 140,100 100,65 160,140] [--quick] [--docs docs]

A recurrent highway network (or any cell of the table) trained from scratch by isscompress, then compressed the
same way (direct design: the baseline's recipe at the found widths; torch.ao's pruner is for nn.LSTM only):

    python examples/benchmarks/ptb.py --name rhn --cell RHN --depth 3 --width 256 --tied \
        --baseline-recipe examples/rhn/rhn-baseline.yaml --recipe examples/rhn/rhn-iss.yaml \
        --model runs/rhn/baseline.safetensors --levels 128 --methods iss-proximal direct one-shot
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml
from safetensors.torch import save_file

import isscompress
from isscompress import LayerSpec, Metadata, ModelSpec, Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "ptb" / "ptb-small-iss.yaml"
MODEL = ROOT.parent / "shared" / "models" / "ptb-small-lstm" / "model.safetensors"
EXCERPT = ROOT / "examples" / "data" / "ptb-excerpt"
METHODS = ("iss-proximal", "iss-subgradient", "direct", "one-shot", "torch-ao-saliency", "unstructured-l1")


@dataclass
class Point:
    method: str
    level: str
    widths: list[int] | None = None
    parameters: int | None = None
    macs: int | None = None
    test_ppl: float | None = None
    removed_ppl: float | None = None  # right after the removal, before any recovery
    speedup_batch1: float | None = None
    speedup_batch20: float | None = None
    mac_ratio: float | None = None
    seconds: float = 0.0
    note: str = ""


@dataclass
class Bench:
    baseline: Path
    recipe: Recipe
    folder: Path
    speed_repeats: int = 5
    points: list[Point] = field(default_factory=list)
    direct_recipe: Recipe | None = None  # how the direct design is trained (default: the LSTM schedule below)

    def test_ppl(self, path: Path) -> float:
        return isscompress.evaluate(path, self.recipe.data.test, recipe=self.recipe).perplexity

    def run(self, method: str, level: str, build: Callable[[Point], Path]) -> Point:
        """One method at one level: reuse its saved point, or build the model, then measure and save it."""
        saved = self.folder / "points" / f"{method}-{level}.json"
        if saved.exists():
            point = Point(**json.loads(saved.read_text()))
        else:
            point, started = Point(method, level), time.perf_counter()
            path = build(point)
            self.measure(point, path)
            point.seconds = time.perf_counter() - started
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(asdict(point)))
        self.points.append(point)
        print(json.dumps(asdict(point)), flush=True)
        return point

    def measure(self, point: Point, path: Path) -> None:
        small, base = isscompress.load_checkpoint(path), isscompress.load_checkpoint(self.baseline)
        point.widths = small.spec.widths
        point.parameters = point.parameters or sum(small.spec.parameter_counts().values())
        point.macs = point.macs or sum(small.spec.macs_per_token().values())
        point.mac_ratio = sum(base.spec.macs_per_token().values()) / point.macs
        point.test_ppl = self.test_ppl(path)
        samples = isscompress.report(base, small, repeats=self.speed_repeats, speed_path="eager").speed
        speed = {s.workload: s.speedup for s in samples}
        point.speedup_batch1, point.speedup_batch20 = speed["decode_batch1"], speed["batch20x35"]


def with_iss(recipe: Recipe, targets: dict[str, int], method: str) -> Recipe:
    return recipe.model_copy(update={"iss": recipe.iss.model_copy(update={"target_widths": targets, "method": method})})


def iss(bench: Bench, targets: dict[str, int], level: str, method: str) -> Callable[[Point], Path]:
    def build(point: Point) -> Path:
        folder = bench.folder / f"iss-{method}-{level}"
        result = isscompress.run(bench.baseline, with_iss(bench.recipe, targets, method), folder, force=True,
                            speed_repeats=1)
        point.removed_ppl = bench.test_ppl(result.shrink.output)
        return result.final
    return build


def recover(bench: Bench, small: Path, point: Point, name: str) -> Path:
    """The recipe's recovery epochs on a physically smaller model (the same for every pruning method)."""
    point.removed_ppl = bench.test_ppl(small)
    recovered = bench.folder / f"{name}.safetensors"
    isscompress.finetune(small, bench.recipe, recovered, stage="recover", force=True)
    return recovered


def one_shot(bench: Bench, widths: list[int], level: str) -> Callable[[Point], Path]:
    """The baseline's lowest-norm ISS groups removed in one step, down to ``widths``, then recovery."""
    def build(point: Point) -> Path:
        base = isscompress.load_checkpoint(bench.baseline)
        norms = isscompress.all_unit_norms(base.state, base.group_sets)
        targets = {f"layer{index}": width for index, width in enumerate(widths)}
        kept = {gs.name: torch.sort(torch.topk(norms[gs.name], targets[gs.width_key]).indices).values
                for gs in base.group_sets}
        masked = dataclasses.replace(base, state=isscompress.mask_state_dict(base.state, base.group_sets, kept))
        small = bench.folder / f"oneshot-{level}-shrunk.safetensors"
        isscompress.shrink(masked, small, 0.0, force=True)
        return recover(bench, small, point, f"oneshot-{level}")
    return build


def direct(bench: Bench, widths: list[int]) -> Callable[[Point], Path]:
    """The ISS widths trained from scratch (the paper's comparison): with the baseline's own recipe when it was
    trained here, else for the epochs ISS spent, lr 20 divided by 4 on a plateau (word_language_model's rule)."""
    def build(point: Point) -> Path:
        base = isscompress.load_checkpoint(bench.baseline).spec
        recipe, epochs = bench.direct_recipe, None
        if recipe is None:
            epochs = bench.recipe.finetune.epochs + (bench.recipe.recover.epochs if bench.recipe.recover else 0)
            schedule = bench.recipe.finetune.model_copy(update={"epochs": epochs, "lr": 20.0, "lr_decay": 0.25,
                                                                "decay_on_plateau": True})
            recipe = bench.recipe.model_copy(update={"finetune": schedule, "iss": None})
        embedding = widths[-1] if base.tied else base.layers[0].input_size
        spec = ModelSpec.language_model(base.cell, widths, embedding, tied=base.tied, depth=base.layers[0].depth)
        out = bench.folder / f"direct-{'-'.join(map(str, widths))}.safetensors"
        isscompress.train(spec, recipe, out, force=True)
        point.note = (f"{epochs} epochs from scratch, lr 20 divided by 4 on a plateau (word_language_model's rule)"
                      if epochs else f"the baseline's recipe ({recipe.finetune.epochs} epochs) at these widths")
        return out
    return build


def equal_width_for(spec: ModelSpec, macs: int) -> int:
    """The one width for every layer whose multiply-adds per token come closest to ``macs``."""
    def cost(width: int) -> int:
        sizes = [spec.layers[0].input_size] + [width] * len(spec.layers)
        layers = tuple(LayerSpec(sizes[i], width) for i in range(len(spec.layers)))
        return sum(dataclasses.replace(spec, layers=layers).macs_per_token().values())
    return min(range(1, spec.layers[0].hidden_size + 1), key=lambda width: abs(cost(width) - macs))


def torch_ao_saliency(bench: Bench, target_macs: int, level: str) -> Callable[[Point], Path]:
    """torch.ao's structured LSTM pruner run as it ships: prepare, step, prune, on Embedding -> LSTM -> Linear."""
    from torch import nn
    from torch.ao.pruning._experimental.pruner import LSTMSaliencyPruner

    class LanguageModel(nn.Module):  # word_language_model's shape, which the pruner's graph patterns match
        def __init__(self, spec: ModelSpec) -> None:
            super().__init__()
            self.encoder = nn.Embedding(spec.vocab_size, spec.layers[0].input_size)
            self.rnn = nn.LSTM(spec.layers[0].input_size, spec.layers[0].hidden_size, len(spec.layers))
            self.decoder = nn.Linear(spec.layers[0].hidden_size, spec.vocab_size)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.rnn(self.encoder(tokens))[0])

    def build(point: Point) -> Path:
        base = isscompress.load_checkpoint(bench.baseline)
        spec, notes = base.spec, []
        if spec.cell != "LSTM" or len(set(spec.widths)) > 1 or spec.tied or any(l.proj_size for l in spec.layers):
            raise RuntimeError("torch.ao's LSTM pruner needs an untied LSTM of one width without projections")
        width = equal_width_for(spec, target_macs)
        notes.append(f"one sparsity level per nn.LSTM, so equal widths: {width} per layer is its closest point to "
                     f"ISS's multiply-adds")
        model = LanguageModel(spec)
        state = {"encoder.weight": base.state["encoder.weight"], "decoder.weight": base.state["decoder.weight"],
                 "decoder.bias": base.state["decoder.bias"]}
        for layer in range(len(spec.layers)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                state[f"rnn.{name}_l{layer}"] = base.state[f"layers.{layer}.{name}_l0"]
        model.load_state_dict(state)
        hidden = spec.layers[0].hidden_size
        pruner = LSTMSaliencyPruner({"sparsity_level": (hidden - width + 0.5) / hidden})
        pruner.prepare(model, [{"tensor_fqn": f"rnn.weight_{kind}_l{layer}"}
                               for layer in range(len(spec.layers)) for kind in ("ih", "hh")])
        pruner.enable_mask_update = True
        pruner.step()
        pruned = pruner.prune()
        notes.append("it keeps rows per gate and per matrix by their own saliency, so the kept i/f/g/o rows and the "
                     "weight_hh columns belong to different units: the pruned model is not the baseline restricted "
                     "to kept units")
        small = bench.folder / f"torch-ao-{level}-pruned.safetensors"
        save_file({k: v.detach().contiguous() for k, v in pruned.state_dict().items()}, str(small))
        point.note = "; ".join(notes)
        return recover(bench, small, point, f"torch-ao-{level}")
    return build


def unstructured(bench: Bench, nonzeros: int, level: str) -> Callable[[Point], Path]:
    """Magnitude pruning of the recurrent and decoder weights to ``nonzeros`` non-zero weights."""
    def build(point: Point) -> Path:
        base = isscompress.load_checkpoint(bench.baseline)
        keys = [k for k in base.state if k.startswith(("layers.", "decoder.weight"))]
        values = torch.cat([base.state[k].abs().flatten() for k in keys])
        cut = torch.kthvalue(values, max(1, values.numel() - nonzeros)).values
        state = dict(base.state)
        for key in keys:
            state[key] = torch.where(base.state[key].abs() > cut, base.state[key], torch.zeros(()))
        path = bench.folder / f"l1-{level}.safetensors"
        isscompress.save_checkpoint(dataclasses.replace(base, state=state, metadata=Metadata(
            family=base.family, spec=base.spec.to_dict())), path)
        point.parameters = sum(int(torch.count_nonzero(v)) for v in state.values())
        point.macs = sum(int(torch.count_nonzero(state[k])) for k in keys if ".weight" in k or "weight_" in k)
        point.note = ("same non-zeros as ISS's model; dense kernels run the zeros at full cost; no recovery "
                      "(it would need masks to keep the zeros)")
        return path
    return build


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def table(bench: Bench, baseline_ppl: float, base_macs: int, setup: dict[str, str]) -> str:
    lines = [f"- {key}: {value}" for key, value in setup.items()] + [""]
    lines += ["| method | target widths | widths | multiply-adds/token | MAC ratio | test ppl | ppl after removal | "
              "speed-up batch 1 | speed-up batch 20 | batch-1 speed-up ÷ MAC ratio | wall s | note |",
              "|" + "---|" * 12,
              f"| baseline | - | {isscompress.load_checkpoint(bench.baseline).spec.widths} | {base_macs:,} | 1.00 | "
              f"{baseline_ppl:.2f} | | | | | | |"]
    for p in bench.points:
        per_mac = _fmt(p.speedup_batch1 / p.mac_ratio) if p.speedup_batch1 and p.mac_ratio else ""
        lines.append(f"| {p.method} | {p.level} | {p.widths or ''} | {_fmt(p.macs, ',')} | {_fmt(p.mac_ratio)} | "
                     f"{_fmt(p.test_ppl)} | {_fmt(p.removed_ppl)} | {_fmt(p.speedup_batch1)} | "
                     f"{_fmt(p.speedup_batch20)} | {per_mac} | {p.seconds:.0f} | {p.note} |")
    return "\n".join(lines)


def write_docs(docs: Path, name: str, text: str, bench: Bench, baseline_ppl: float, base_macs: int) -> None:
    """The table between the ``name`` markers of docs/results.md (created if missing) and the plot beside it."""
    docs.mkdir(parents=True, exist_ok=True)
    results = docs / "results.md"
    START, END = f"<!-- {name}-benchmark:start -->", f"<!-- {name}-benchmark:end -->"
    old = results.read_text() if results.exists() else f"# Results\n\n{START}\n{END}\n"
    head, rest = old.split(START, 1) if START in old else (old + "\n", END)
    results.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(7.5, 4.5))
    for method in dict.fromkeys(p.method for p in bench.points if p.macs and p.test_ppl):
        xy = sorted((p.macs, p.test_ppl) for p in bench.points if p.method == method and p.macs and p.test_ppl)
        axis.plot(*zip(*xy), marker="o", label=method)
    axis.scatter([base_macs], [baseline_ppl], marker="*", s=140, color="black", label="baseline", zorder=3)
    axis.set_xlabel("multiply-adds per token (unstructured: non-zero weights)")
    axis.set_ylabel("test perplexity")
    axis.set_title(f"PTB, {bench.baseline.parent.name}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(docs / f"{name}-benchmark.png", dpi=110)


def quick_recipe(folder: Path) -> Path:
    """A few thousand tokens of the PTB excerpt: the code path, not the numbers."""
    path = folder / "quick.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"train": str(EXCERPT / "train.txt"), "valid": str(EXCERPT / "valid.txt"),
                 "test": str(EXCERPT / "test.txt"), "vocab": "corpus", "max_train_tokens": 3000,
                 "max_eval_tokens": 1000},
        "finetune": {"epochs": 1, "lr": 5.0, "batch_size": 10, "bptt": 20, "log_every": 50},
        "iss": {"lambda": 0.035, "method": "proximal", "reweight": 1.0},
        "shrink": {"threshold": 0.0001},
        "recover": {"epochs": 1, "lr": 2.0, "batch_size": 10, "bptt": 20, "log_every": 50},
    }))
    return path


def main(argv: list[str] | None = None) -> Bench:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--levels", nargs="+", default=None,
                        help="ISS target widths per level, comma-separated per layer (default 140,100 100,65 160,140;"
                             " --quick 16,14)")
    parser.add_argument("--quick", action="store_true", help="tiny model and data: checks the code path")
    parser.add_argument("--output", type=Path, default=Path("runs/ptb-benchmark"))
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--fresh", action="store_true", help="ignore the points saved by an earlier run")
    parser.add_argument("--name", default="ptb", help="names the markers in results.md and the plot")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--baseline-recipe", type=Path, default=None,
                        help="train the baseline (--model, when missing) from scratch with this recipe")
    parser.add_argument("--cell", default="LSTM", help="the trained baseline's cell")
    parser.add_argument("--depth", type=int, default=1, help="the trained baseline's recurrence depth (RHN)")
    parser.add_argument("--width", type=int, nargs="+", default=[200], help="the trained baseline's widths")
    parser.add_argument("--tied", action="store_true", help="the trained baseline ties its embedding")
    args = parser.parse_args(argv)
    args.levels = args.levels or (["16,14"] if args.quick else ["140,100", "100,65", "160,140"])
    args.output.mkdir(parents=True, exist_ok=True)
    if args.fresh:
        for saved in (args.output / "points").glob("*.json"):
            saved.unlink()
    started = time.perf_counter()
    recipe_path, model = args.recipe, args.model
    if args.quick:
        recipe_path = quick_recipe(args.output)
        model = args.output / "quick-baseline.safetensors"
        spec = ModelSpec("LSTM", (LayerSpec(16, 24), LayerSpec(24, 24)), vocab_size=1)
        isscompress.train(spec, recipe_path, model, force=True)
    direct_recipe = load_recipe(args.baseline_recipe) if args.baseline_recipe else None
    if direct_recipe is not None and not model.exists():
        spec = ModelSpec.language_model(args.cell, args.width, args.width[-1], tied=args.tied, depth=args.depth)
        model.parent.mkdir(parents=True, exist_ok=True)
        isscompress.train(spec, direct_recipe, model)
    recipe = load_recipe(recipe_path)
    bench = Bench(model, recipe, args.output, speed_repeats=2 if args.quick else 5, direct_recipe=direct_recipe)
    baseline_ppl = bench.test_ppl(model)
    base_spec = isscompress.load_checkpoint(model).spec
    base_macs = sum(base_spec.macs_per_token().values())

    def publish() -> None:
        """Rewrite the docs after every level, so an interrupted run still shows what it measured."""
        setup = {
            "command": f"`python examples/benchmarks/ptb.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
            "baseline": f"`{model.name}` in `{model.parent.name}`, test perplexity {baseline_ppl:.2f}",
            "recipe": f"`{recipe_path.name}` (seed {recipe.finetune.seed}; recovery seed "
                      f"{recipe.recover.seed if recipe.recover else '-'}); λ {recipe.iss.lambda_:g}, reweight "
                      f"{recipe.iss.reweight:g}, method as named; target widths per level {', '.join(args.levels)}",
            "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads; speed-ups interleaved in one process, medians of "
                       f"{bench.speed_repeats}",
            "wall time": f"{sum(p.seconds for p in bench.points) / 60:.1f} min of measured work "
                         f"({(time.perf_counter() - started) / 60:.1f} min in this invocation)",
        }
        write_docs(args.docs, args.name, table(bench, baseline_ppl, base_macs, setup), bench, baseline_ppl, base_macs)

    for level in args.levels:
        targets = {f"layer{i}": int(width) for i, width in enumerate(level.split(","))}
        level = level.replace(",", "-")
        found = bench.run("iss-proximal", level, iss(bench, targets, level, "proximal"))
        if "iss-subgradient" in args.methods:
            bench.run("iss-subgradient", level, iss(bench, targets, level, "subgradient"))
        if "direct" in args.methods:
            bench.run("direct", level, direct(bench, found.widths))
        if "one-shot" in args.methods:
            bench.run("one-shot", level, one_shot(bench, found.widths, level))
        if "torch-ao-saliency" in args.methods:
            bench.run("torch-ao-saliency", level, torch_ao_saliency(bench, found.macs, level))
        if "unstructured-l1" in args.methods:
            small = base_spec.with_kept({gs.name: found.widths[i] for i, gs in enumerate(base_spec.group_sets())})
            nonzeros = sum(small.parameter_counts().values()) - small.parameter_counts()["embedding"]
            bench.run("unstructured-l1", level, unstructured(bench, nonzeros, level))
        publish()
    return bench


if __name__ == "__main__":
    main()
