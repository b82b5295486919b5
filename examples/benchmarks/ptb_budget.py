"""Benchmark: ISS against one-shot pruning at equal compute, with and without distillation, at a MAC budget.

On the shared 2x200 PTB model, every method gets the same number of epochs after the baseline:

  dense-control       the baseline trained that many more epochs, nothing removed (what "lossless" is judged by)
  iss                 ISS fine-tuning to the budget (iss.target: {macs: B}), shrink, recovery (isscompress run)
  iss+distill         the same with distill: {alpha: A} in both stages, the original as the teacher
  one-shot            the baseline's lowest-norm units removed down to the widths ISS reached, then recovery for
                      all the epochs
  one-shot+distill    the same, recovering with the original as the teacher

    python examples/benchmarks/ptb_budget.py [--budgets 0.5 0.3333 0.25] [--epochs 1 3] [--alpha 0.5] [--output runs/budget]

Every level (a MAC budget) gets its own ISS run and the one-shot rows at the widths ISS reached there; the dense
control is shared. Prints one Markdown table (test perplexity, widths, multiply-add ratio, perplexity right after
removal); points already finished in --output are reused, so levels and methods can be added by later runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

import isscompress
from isscompress import BudgetSection, DistillSection, Recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "examples" / "ptb" / "ptb-small-iss.yaml"
MODEL = ROOT.parent / "shared" / "models" / "ptb-small-lstm" / "model.safetensors"


def recipe_for(base: Recipe, budget: float, epochs: tuple[int, int], alpha: float | None) -> Recipe:
    iss = base.iss.model_copy(update={"target_widths": {}, "target": BudgetSection(macs=budget)})
    return base.model_copy(update={
        "iss": iss,
        "finetune": base.finetune.model_copy(update={"epochs": epochs[0]}),
        "recover": base.recover.model_copy(update={"epochs": epochs[1]}),
        "distill": DistillSection(alpha=alpha) if alpha else None})


def slug(name: str) -> str:
    """A point's name as a file name: 'iss @ 0.5' -> 'iss-at-0.5'."""
    return name.replace(" @ ", "-at-")


def test_ppl(path: Path, recipe: Recipe) -> float:
    return isscompress.evaluate(path, recipe.data.test, recipe=recipe, max_tokens=recipe.data.max_eval_tokens).perplexity


def macs(path: Path) -> int:
    return sum(isscompress.load_checkpoint(path).spec.macs_per_token().values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5],
                        help="multiply-adds per token, fractions of the original: one level each")
    parser.add_argument("--epochs", type=int, nargs=2, default=[1, 3], metavar=("ISS", "RECOVER"))
    parser.add_argument("--alpha", type=float, default=0.5, help="distillation weight of the +distill rows")
    parser.add_argument("--lam", type=float, help="override iss.lambda")
    parser.add_argument("--reweight", type=float, help="override iss.reweight (the exponent of 1/norm on each group's λ)")
    parser.add_argument("--seed", type=int, help="override the recipe's seeds (dropout masks): a second run of the same design")
    parser.add_argument("--methods", nargs="+", default=["dense-control", "iss", "iss+distill", "one-shot",
                                                         "one-shot+distill"])
    parser.add_argument("--output", type=Path, default=Path("runs/budget"))
    parser.add_argument("--quick", action="store_true", help="20k training tokens, 4k evaluation tokens")
    parser.add_argument("--train-tokens", type=int, help="train on the first N tokens only (overrides --quick's 20k)")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    base = load_recipe(args.recipe)
    if args.quick:
        base = base.model_copy(update={"data": base.data.model_copy(update={"max_train_tokens": 20_000,
                                                                            "max_eval_tokens": 4_000})})
    if args.train_tokens:
        base = base.model_copy(update={"data": base.data.model_copy(update={"max_train_tokens": args.train_tokens})})
    if args.lam:
        base = base.model_copy(update={"iss": base.iss.model_copy(update={"lambda_": args.lam})})
    if args.reweight is not None:
        base = base.model_copy(update={"iss": base.iss.model_copy(update={"reweight": args.reweight})})
    if args.seed is not None:
        base = base.model_copy(update={stage: getattr(base, stage).model_copy(update={"seed": args.seed})
                                       for stage in ("finetune", "recover")})
    epochs = tuple(args.epochs)
    total = sum(epochs)
    original = isscompress.load_checkpoint(args.model)
    base_macs = sum(original.spec.macs_per_token().values())
    points: dict[str, dict] = {}

    def done(name: str, build) -> dict:
        saved = args.output / f"{slug(name)}.json"
        if saved.exists():
            points[name] = json.loads(saved.read_text())
            return points[name]
        began = time.perf_counter()
        point = build()
        point["seconds"] = time.perf_counter() - began
        saved.write_text(json.dumps(point, indent=2))
        points[name] = point
        print(name, point, flush=True)
        return point

    def control() -> dict:
        recipe = base.model_copy(update={"recover": base.recover.model_copy(update={"epochs": total})})
        out = args.output / "control.safetensors"
        isscompress.finetune(original, recipe, out, stage="recover", force=True)
        return {"test_ppl": test_ppl(out, recipe), "widths": original.spec.widths, "macs": base_macs}

    def iss(budget: float, alpha: float | None, name: str):
        def build() -> dict:
            recipe = recipe_for(base, budget, epochs, alpha)
            folder = args.output / slug(name)
            isscompress.run(args.model, recipe, folder, force=True, speed_repeats=1)
            small = folder / "recovered.safetensors"
            shrunk = folder / "shrunk.safetensors"
            return {"test_ppl": test_ppl(small, recipe), "removed_ppl": test_ppl(shrunk, recipe),
                    "widths": isscompress.load_checkpoint(small).spec.widths, "macs": macs(small)}
        return build

    def one_shot(budget: float, alpha: float | None, name: str, widths: list[int]):
        def build() -> dict:
            norms = isscompress.all_unit_norms(original.state, original.group_sets)
            targets = {f"layer{i}": w for i, w in enumerate(widths)}  # the recurrent widths ISS reached
            kept = {gs.name: torch.sort(torch.topk(norms[gs.name], targets[gs.width_key]).indices).values
                    for gs in original.group_sets if gs.width_key in targets}
            masked = dataclasses.replace(original, state=isscompress.mask_state_dict(original.state,
                                                                                      original.group_sets, kept))
            shrunk = args.output / f"{slug(name)}-shrunk.safetensors"
            isscompress.shrink(masked, shrunk, 0.0, force=True)
            recipe = recipe_for(base, budget, (1, total), alpha)
            out = args.output / f"{slug(name)}.safetensors"
            isscompress.finetune(shrunk, recipe, out, stage="recover", force=True,
                                 teacher=original if alpha else None)
            return {"test_ppl": test_ppl(out, recipe), "removed_ppl": test_ppl(shrunk, recipe), "widths": widths,
                    "macs": macs(out)}
        return build

    for budget in args.budgets:
        found = None
        for method in args.methods:
            if method == "dense-control":
                done(method, control)
                continue
            name = f"{method} @ {budget:g}"
            if method.startswith("iss"):
                found = done(name, iss(budget, args.alpha if "distill" in method else None, name))
            elif method.startswith("one-shot"):
                reference = found or next((p for n, p in points.items() if n.startswith("iss") and
                                           n.endswith(f"@ {budget:g}")), None)
                if reference is None:
                    raise SystemExit("one-shot takes the widths ISS reached: run an iss method first")
                done(name, one_shot(budget, args.alpha if "distill" in method else None, name, reference["widths"]))

    baseline_ppl = test_ppl(args.model, base)
    print(f"\nBaseline {args.model.name}: test perplexity {baseline_ppl:.2f}; budgets {args.budgets} of the multiply-adds; "
          f"{total} epochs after the baseline for every method (ISS {epochs[0]} + recovery {epochs[1]}); "
          f"distillation alpha {args.alpha}.\n")
    print("| method | widths | MAC ratio | test ppl right after removal | test ppl |")
    print("|---|---|---:|---:|---:|")
    for name, point in points.items():
        removed = f"{point['removed_ppl']:.2f}" if point.get("removed_ppl") else "-"
        print(f"| {name} | {'/'.join(map(str, point['widths']))} | {base_macs / point['macs']:.2f}x | {removed} | "
              f"{point['test_ppl']:.2f} |")


if __name__ == "__main__":
    main()
