"""The budget sweep every example under examples/real/ runs: for each method and MAC budget, fine-tune the shipped
model (label-free, from itself), shrink, optionally recover, and report on the task's own metric — the same
commands a user runs (each folder's README), called as the library functions under them.

Prints one Markdown row per run as it finishes, then the whole table: the metric before -> after and on the
evaluation's two halves (their difference is the noise), MAC, parameter and file ratios, the measured speed-up on
the example inputs, and the wall time of each stage on this machine. Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

import isscompress


@dataclass(frozen=True)
class Example:
    folder: Path
    arch: str  # FILE.py:FACTORY
    model: Path  # the shipped weights, as pip downloaded them
    metric: str  # the evaluate() key the table shows; "<metric> (half A|B)" are its halves
    higher_is_better: bool = True
    iss_lambda: float = 30.0  # group Lasso strength of the ISS methods (proximal, subgradient) in the comparison


# Methods that choose their units (no lambda): the recipe's iss section for each
CHOSEN = {
    "one-shot": {"method": "one-shot", "importance": "norm"},  # as the published one-shot baselines rank units
    "one-shot-taylor": {"method": "one-shot", "importance": "taylor"},
    "one-shot-taylor-ls": {"method": "one-shot", "importance": "taylor", "reconstruct": True},
    "gradual-taylor": {"method": "gradual", "importance": "taylor"},
    "gradual-taylor-split": {"method": "gradual", "importance": "taylor", "split_layers": True},  # a multi-layer LSTM
    "gradual-taylor-early": {"method": "gradual", "importance": "taylor", "reach_by": 0.3},  # long stages
}


def recipe_for(example: Example, method: str, budget: float, out: Path, epochs: int | None = None,
               target: str = "macs", widths: str = "recurrent") -> Path:
    base = yaml.safe_load((example.folder / "recipe.yaml").read_text())
    if epochs is not None:
        base["finetune"]["epochs"] = epochs
    iss = base.get("iss", {})
    base["iss"] = {**CHOSEN[method], "target": {target: budget}, "widths": widths} if method in CHOSEN else \
        {**{k: v for k, v in iss.items() if k not in ("method", "target")}, "method": method,
         "lambda": example.iss_lambda, "warmup_steps": 20, "target": {target: budget}, "widths": widths}
    base.setdefault("distill", {})["teacher"] = str(example.model)
    path = out / f"recipe-{method}-{target}-{widths}-{budget}.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def one_run(example: Example, method: str, budget: float, out: Path, recover: bool, epochs: int | None = None,
            target: str = "macs", widths: str = "recurrent") -> dict:
    recipe = recipe_for(example, method, budget, out, epochs, target, widths)
    tuned, small, recovered = (out / f"{stage}-{method}-{target}-{widths}-{budget}.safetensors"
                               for stage in ("tuned", "shrunk", "recovered"))
    times = {}
    start = time.perf_counter()
    isscompress.finetune(example.model, recipe, tuned, arch=example.arch, force=True)
    times["finetune"] = time.perf_counter() - start
    start = time.perf_counter()
    isscompress.shrink(tuned, small, 0.0, arch=example.arch, force=True, widths=widths)
    times["shrink"] = time.perf_counter() - start
    final = small
    if recover:
        start = time.perf_counter()
        isscompress.finetune(small, recipe, recovered, arch=example.arch, stage="recover", force=True)
        times["recover"] = time.perf_counter() - start
        final = recovered
    report = isscompress.report(example.model, final, arch=example.arch, repeats=9)
    label = method + (f", {epochs} epochs" if epochs else "") + (" + recover" if recover else "") + \
        (", every width" if widths == "all" else "")
    return {"method": label, "budget": f"{budget} of {target}", "report": report, "times": times}


def table(example: Example, rows: list[dict]) -> str:
    name = example.metric
    lines = [f"| method | budget | widths | {name} | half A | half B | MAC ratio | params | file | speed-up | "
             "time (finetune / shrink / recover) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        r = row["report"]
        m = r.metrics
        widths = "/".join(str(after) for _, after in r.widths.values())  # every set, feature widths last
        ratio = lambda a, b: f"{a / b:.2f}x"  # noqa: E731
        lines.append(
            f"| {row['method']} | {row['budget']} | {widths} | {m[name][0]:.4g} → {m[name][1]:.4g} | "
            f"{m[f'{name} (half A)'][1]:.4g} | {m[f'{name} (half B)'][1]:.4g} | {r.mac_ratio:.2f}x | "
            f"{ratio(r.original.total_parameters, r.shrunk.total_parameters)} | "
            f"{ratio(r.original.file_bytes, r.shrunk.file_bytes)} | {r.speed[0].speedup:.2f}x | "
            + " / ".join(f"{row['times'][k]:.0f} s" if k in row["times"] else "-"
                         for k in ("finetune", "shrink", "recover")) + " |")
    return "\n".join(lines)


def main(example: Example) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.75, 0.5, 0.35, 0.25])
    parser.add_argument("--methods", nargs="+", default=["gradual-taylor"],
                        help=f"{', '.join(CHOSEN)}, proximal, subgradient")
    parser.add_argument("--recover", action="store_true", help="Also the recipe's recover stage after the shrink.")
    parser.add_argument("--epochs", type=int, help="Fine-tuning epochs instead of the recipe's.")
    parser.add_argument("--target", choices=["macs", "parameters"], default="macs", help="What the budget counts.")
    parser.add_argument("--widths", nargs="+", choices=["recurrent", "all"], default=["recurrent"],
                        help="What ISS narrows: the recurrent layers, or every width (embedding, MLP units).")
    parser.add_argument("--out", type=Path, default=example.folder / "out")
    args = parser.parse_args()
    if (os.cpu_count() or 1) <= 2:  # as the CLI does: one thread on a small machine, where more collapse
        torch.set_num_threads(1)
    args.out.mkdir(exist_ok=True)
    metrics = isscompress.report(example.model, arch=example.arch, speed=False).metrics
    print(f"original: {example.metric} {metrics[example.metric][0]:.4g} (halves "
          f"{metrics[example.metric + ' (half A)'][0]:.4g} / {metrics[example.metric + ' (half B)'][0]:.4g})",
          flush=True)
    rows = []
    for method in args.methods:
        for budget in args.budgets:
            for widths in args.widths:
                rows.append(one_run(example, method, budget, args.out, args.recover, args.epochs, args.target,
                                    widths))
                print(table(example, rows[-1:]).splitlines()[-1], flush=True)
    print(table(example, rows))
