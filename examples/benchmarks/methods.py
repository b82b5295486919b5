"""Benchmark: every way isscompress can choose and remove units, at equal compute, on the shared PTB 2x200 model.

Each method gets the same fine-tuning stage — one epoch over the first N training tokens, word_language_model's
settings (SGD, lr 20, clip 0.25, dropout 0.2, batch 20, bptt 35) — to half the multiply-adds per token, then the
model is shrunk and measured on the first tokens of valid and of test (two samples: their spread is the noise):

  one-shot norm            the lowest-norm units removed at the start, the stage recovers the rest
  one-shot taylor          ranked by Taylor importance on the stage's loss instead
  one-shot taylor + LS     and the removed units' share folded into the kept ones' readers (least squares)
  gradual norm | taylor    removed in 10 rounds along the cubic schedule up to 3/4 of the stage, training between
  lasso steered            proximal group Lasso (lambda 0.01, reweight 2), lambda steered to reach it by 3/4

    python examples/benchmarks/methods.py [--tokens 200000] [--budget 0.5] [--seed 1111] [--output runs/methods]

Prints one Markdown table, each row as it finishes (seconds: the whole stage, scoring and fitting included).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import isscompress

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "ptb-small-lstm"
PTB = SHARED / "data" / "ptb"
MEASURED = 20000  # tokens of valid and of test

STAGE = """data: {{train: {train}, vocab: {vocab}, max_train_tokens: {tokens}}}
finetune: {{epochs: 1, lr: 20, clip: 0.25, dropout: 0.2, batch_size: 20, bptt: 35, seed: {seed}, log_every: 1000}}
iss: {{target: {{macs: {budget}}}, {method}}}
"""
METHODS = {
    "one-shot norm": "method: one-shot, importance: norm",
    "one-shot taylor": "method: one-shot, importance: taylor",
    "one-shot taylor + LS": "method: one-shot, importance: taylor, reconstruct: true",
    "gradual norm": "method: gradual, importance: norm",
    "gradual taylor": "method: gradual, importance: taylor",
    "lasso steered": "method: proximal, lambda: 0.01, reweight: 2, reach_by: 0.75",
}


def perplexities(checkpoint: isscompress.Checkpoint, tokens: int = MEASURED, vocab: str | None = None) -> str:
    """Perplexity on the first ``tokens`` of valid and of test, as two Markdown cells (their spread is the noise)."""
    vocab = vocab or str(MODEL / "vocab.txt")
    measured = (isscompress.evaluate(checkpoint, PTB / f"ptb.{split}.txt", vocab=vocab, max_tokens=tokens)
                for split in ("valid", "test"))
    return " | ".join(f"{result.perplexity:.1f}" for result in measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200000, help="training tokens of the one fine-tuning epoch")
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of the multiply-adds per token kept")
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--output", type=Path, default=Path("runs/methods"))
    parser.add_argument("--model", type=Path, default=MODEL / "model.safetensors",
                        help="another PTB model (e.g. an RHN isscompress trained), its vocabulary stored in it")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    vocab = str(MODEL / "vocab.txt") if args.model == MODEL / "model.safetensors" else "auto"
    original = isscompress.load_checkpoint(args.model)
    print("| method | widths | MACs ratio | valid ppl | test ppl | seconds |\n|---|---|---|---|---|---|")
    print(f"| (original) | {list(original.spec.widths)} | 1.00x | {perplexities(original, vocab=vocab)} | |",
          flush=True)
    full = sum(original.spec.macs_per_token().values())
    for name in args.methods:
        recipe = args.output / f"{name.replace(' ', '-').replace('+', 'and')}.yaml"
        recipe.write_text(STAGE.format(train=PTB / "ptb.train.txt", vocab=vocab, tokens=args.tokens, seed=args.seed,
                                       budget=args.budget, method=METHODS[name]))
        started = time.perf_counter()
        tuned = isscompress.finetune(original, recipe).checkpoint
        seconds = time.perf_counter() - started
        small = isscompress.shrink(tuned, threshold=1e-4).checkpoint
        ratio = full / sum(small.spec.macs_per_token().values())
        print(f"| {name} | {list(small.spec.widths)} | {ratio:.2f}x | {perplexities(small, vocab=vocab)} | "
              f"{seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
