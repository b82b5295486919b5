"""Benchmark: right after one-shot removal, before any fine-tuning — how the ranking (norm or Taylor importance) and
the repair (least-squares reconstruction of the readers, or none) change the damage.

On the shared 2x200 PTB model (pytorch/examples word_language_model, trained by main.py), each method removes units
down to the budget with the learning rate at ~0 for one step (so only the removal and the repair act), then the
shrunk model's perplexity is measured on the first tokens of valid and of test — two samples, so the spread between
them shows the noise. Scoring and reconstruction each run on the first 8 training batches (20 x 35 tokens); their
seconds are printed (the whole one-step stage). With ``--recover N``, each shrunk model is then fine-tuned for one
epoch over the first N training tokens (word_language_model's settings: SGD, lr 20, clip 0.25, dropout 0.2), the
same for every method, and measured again.

    python examples/benchmarks/removal_repair.py [--budget 0.5] [--tokens 20000] [--recover 200000] \
        [--output runs/repair]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import isscompress
from methods import MODEL, PTB
from methods import perplexities as ptb_perplexities

RECIPE = """data: {{train: {train}, vocab: {vocab}, max_train_tokens: {tokens}}}
finetune: {{epochs: 1, max_steps: 1, lr: 1.0e-12, optimizer: sgd, batch_size: 20, bptt: 35}}
recover: {{epochs: 1, lr: 20, clip: 0.25, dropout: 0.2, batch_size: 20, bptt: 35, seed: 1111, log_every: 1000}}
iss: {{method: one-shot, target: {{macs: {budget}}}, importance: {importance}, importance_batches: 8,
      reconstruct: {reconstruct}, reconstruct_batches: 8}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.5, help="fraction of the multiply-adds per token kept")
    parser.add_argument("--tokens", type=int, default=20000, help="tokens of valid and of test measured")
    parser.add_argument("--recover", type=int, default=0, help="recovery fine-tuning over this many training tokens")
    parser.add_argument("--output", type=Path, default=Path("runs/repair"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    vocab = MODEL / "vocab.txt"
    original = isscompress.load_checkpoint(MODEL / "model.safetensors")

    def perplexities(checkpoint: isscompress.Checkpoint) -> str:
        return ptb_perplexities(checkpoint, args.tokens)

    recovered = " | valid after recovery | test after recovery" if args.recover else ""
    print(f"| ranking | repair | widths | valid ppl | test ppl | seconds{recovered} |")
    print("|---" * (6 + 2 * bool(args.recover)) + "|")
    blank = " |" * 2 * bool(args.recover)
    print(f"| (original) | | {list(original.spec.widths)} | {perplexities(original)} | |{blank}")
    for importance, reconstruct in itertools.product(("norm", "taylor"), (False, True)):
        recipe = args.output / f"{importance}-{'reconstruct' if reconstruct else 'plain'}.yaml"
        recipe.write_text(RECIPE.format(train=PTB / "ptb.train.txt", vocab=vocab, budget=args.budget,
                                        tokens=max(args.recover, 60000), importance=importance,
                                        reconstruct=str(reconstruct).lower()))
        started = time.perf_counter()
        tuned = isscompress.finetune(original, recipe).checkpoint
        seconds = time.perf_counter() - started
        small = isscompress.shrink(tuned, threshold=1e-4).checkpoint
        after = ""
        if args.recover:
            after = f" {perplexities(isscompress.finetune(small, recipe, stage='recover').checkpoint)} |"
        print(f"| {importance} | {'least squares' if reconstruct else 'none'} | {list(small.spec.widths)} | "
              f"{perplexities(small)} | {seconds:.1f} |{after}", flush=True)


if __name__ == "__main__":
    main()
