"""Benchmark: the cost of an ISS fine-tuning step, and (with --compress) the PTB compression result.

Step cost, measured side by side in one process on the same model, batch and bptt, alternating:
  A  a plain word_language_model-style training loop written here (nn.LSTM(num_layers=2), SGD, clip);
  B  isscompress's fit() without ISS;
  C  fit() with ISS, proximal;     D  fit() with ISS, subgradient (the paper's method).
Prints the step times, ISS / plain (goal <= 1.05) and fit() throughput / plain loop throughput (goal >= 1.0).

--compress runs `isscompress run` with examples/ptb/ptb-small-iss.yaml on the 2x200 PTB model and prints
widths, multiply-adds per token and test perplexity before and after (goal: >= 2x fewer multiply-adds with test
perplexity no worse than the baseline's 96.86).

    python examples/benchmarks/finetune_ptb.py [--model DIR] [--repeats 5] [--steps 20] [--compress]

An internals benchmark: it times isscompress's training loop and ISS hook directly (training/loop.py,
training/iss_hook.py), which the public verbs wrap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import isscompress
from isscompress import IssSection, Schedule
from isscompress.training.iss_hook import GroupLassoHook  # an internals benchmark: it times the loop itself
from isscompress.training.loop import fit

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT.parent / "shared" / "models" / "ptb-small-lstm" / "model.safetensors"


class PlainRNNModel(nn.Module):
    """The word_language_model shape: embedding, one nn.LSTM(num_layers), decoder."""

    def __init__(self, checkpoint: isscompress.Checkpoint) -> None:
        super().__init__()
        spec, state = checkpoint.spec, checkpoint.state
        self.encoder = nn.Embedding.from_pretrained(state["encoder.weight"].clone(), freeze=False)
        self.rnn = nn.LSTM(spec.layers[0].input_size, spec.layers[0].hidden_size, len(spec.layers))
        with torch.no_grad():
            for layer in range(len(spec.layers)):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(self.rnn, f"{name}_l{layer}").copy_(state[f"layers.{layer}.{name}_l0"])
        self.decoder = nn.Linear(spec.layers[-1].hidden_size, spec.vocab_size)
        with torch.no_grad():
            self.decoder.weight.copy_(state["decoder.weight"])
            self.decoder.bias.copy_(state["decoder.bias"])

    def forward(self, tokens, hidden=None):
        output, hidden = self.rnn(self.encoder(tokens), hidden)
        return self.decoder(output), hidden


def plain_loop(model: PlainRNNModel, data: torch.Tensor, bptt: int, lr: float, clip: float) -> float:
    """main.py's train(): repackage hidden, forward, loss, backward, clip, p -= lr * grad."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    hidden = None
    start = time.perf_counter()
    for i in range(0, data.size(0) - 1, bptt):
        inputs, targets = data[i : i + bptt], data[i + 1 : i + 1 + bptt]
        hidden = None if hidden is None else tuple(h.detach() for h in hidden)
        model.zero_grad()
        output, hidden = model(inputs, hidden)
        loss = criterion(output.view(-1, output.size(-1)), targets.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-lr)
    return time.perf_counter() - start


def our_loop(checkpoint, data, schedule, iss) -> float:
    model = checkpoint.model()
    start = time.perf_counter()
    fit(model, data, None, schedule, hooks=[GroupLassoHook(checkpoint.group_sets, iss)] if iss else [])
    return time.perf_counter() - start


def step_cost(model_path: Path, repeats: int, steps: int) -> None:
    checkpoint = isscompress.load_checkpoint(model_path)
    batch, bptt = 20, 35
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, checkpoint.spec.vocab_size, (steps * bptt + 1, batch), generator=generator)
    schedule = Schedule(epochs=1, lr=1.0, batch_size=batch, bptt=bptt, clip=0.25, log_every=10**6, device="cpu")
    variants = {
        "A plain loop (word_language_model)": lambda: plain_loop(PlainRNNModel(checkpoint), data, bptt, 1.0, 0.25),
        "B fit(), no ISS": lambda: our_loop(checkpoint, data, schedule, None),
        "C fit(), ISS proximal": lambda: our_loop(checkpoint, data, schedule, IssSection(lambda_=0.001, method="proximal")),
        "D fit(), ISS subgradient": lambda: our_loop(checkpoint, data, schedule, IssSection(lambda_=0.001)),
    }
    for run in variants.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run() / steps)
    print(f"model {model_path.name}: {checkpoint.spec.cell} widths {checkpoint.spec.widths}, batch {batch}, "
          f"bptt {bptt}, {steps} steps x {repeats} repeats, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"  {name:<36} s/step min {min(values):.4f} median {statistics.median(values):.4f} max {max(values):.4f}")
    a, b, c, d = (times[name] for name in variants)

    def ratio(x, y):
        paired = [p / q for p, q in zip(x, y)]
        return f"median {statistics.median(paired):.3f} (paired min {min(paired):.3f}, max {max(paired):.3f})"

    print(f"  ISS proximal step / plain fit() step    {ratio(c, b)}   goal <= 1.05")
    print(f"  ISS subgradient step / plain fit() step {ratio(d, b)}")
    print(f"  fit() throughput / plain loop throughput {ratio(a, b)}   goal >= 1.0")


def compress(model_path: Path, folder: Path) -> None:
    recipe = ROOT / "examples" / "ptb" / "ptb-small-iss.yaml"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "isscompress", "run", str(model_path), "-r", str(recipe), "-o", str(folder),
                    "--force"], check=True)
    report = json.loads((folder / "report.json").read_text())
    print(f"\ncompression ({time.perf_counter() - start:.0f} s): widths "
          f"{[l['width_before'] for l in report['layers']]} -> {[l['width_after'] for l in report['layers']]}, "
          f"multiply-adds/token {report['original']['total_macs_per_token']:,} -> "
          f"{report['shrunk']['total_macs_per_token']:,} ({report['mac_ratio']:.2f}x), test perplexity "
          f"{report['perplexity']['before']['perplexity']:.2f} -> {report['perplexity']['after']['perplexity']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("runs/ptb-small-iss"))
    args = parser.parse_args()
    step_cost(args.model, args.repeats, args.steps)
    if args.compress:
        compress(args.model, args.output)


if __name__ == "__main__":
    main()
