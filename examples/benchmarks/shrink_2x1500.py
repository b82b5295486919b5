"""Benchmark: shrink a 2x1500 word_language_model checkpoint (about 66M parameters).

Prints shrink time / plain file-copy time (goal <= 2) and peak memory / file size (goal <= 1.5).
Every measurement runs in a fresh subprocess started from this driver, which never imports
torch (a forked child's ru_maxrss would otherwise start from the parent's high-water mark).
Copy and shrink alternate, so both see the same machine load. Both are timed writing a new file and
writing over an existing one: replacing a file first frees the old one's pages, which on this kind of
machine more than doubles a copy's time, so the two cases are compared like for like.

    python examples/benchmarks/shrink_2x1500.py [--repeats 5] [--keep 373 315]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MAKE = """
import sys, torch
from safetensors.torch import save_file
torch.manual_seed(0)
V, H, keep = int(sys.argv[4]), int(sys.argv[5]), [int(k) for k in sys.argv[2:4]]
state = {"encoder.weight": torch.randn(V, H) * 0.1, "decoder.weight": torch.randn(V, H) * 0.1,
         "decoder.bias": torch.zeros(V)}
for layer in range(2):
    for name, shape in (("weight_ih", (4 * H, H)), ("weight_hh", (4 * H, H)), ("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))):
        state[f"rnn.{name}_l{layer}"] = torch.randn(shape) * 0.05
# Zero the ISS groups of the units ISS fine-tuning would have removed (the paper's widths).
for layer, kept in enumerate(keep):
    dead = torch.arange(kept, H)
    rows = torch.cat([dead + g * H for g in range(4)])
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        state[f"rnn.{name}_l{layer}"][rows] = 0
    state[f"rnn.weight_hh_l{layer}"][:, dead] = 0
    consumer = "rnn.weight_ih_l1" if layer == 0 else "decoder.weight"
    state[consumer][:, dead] = 0
save_file(state, sys.argv[1])
"""

MEASURE = """
import json, resource, shutil, sys, time
mode, source, target = sys.argv[1:4]
import torch, safetensors, isscompress  # imports are not timed
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
if mode.startswith("copy"):
    shutil.copyfile(source, target)
elif mode == "core":  # the surgery alone: no output check, no source hash
    c = isscompress.load_checkpoint(source)
    kept = isscompress.select_kept(isscompress.all_unit_norms(c.state, c.group_sets), c.group_sets, 0.0)
    small = isscompress.shrink_state_dict(c.state, c.group_sets, kept)
    isscompress.save_checkpoint(isscompress.Checkpoint(c.spec, small, c.family), target)
else:
    result = isscompress.shrink(source, target, threshold=0.0, force=True)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": elapsed, "baseline": baseline, "peak": peak}))
"""


def run(code: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=int, nargs=2, default=(373, 315))
    parser.add_argument("--hidden", type=int, default=1500, help="units per layer (the paper's large model: 1500)")
    parser.add_argument("--vocab", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "wlm_2x1500.safetensors"
        run(MAKE, str(source), *map(str, args.keep), str(args.vocab), str(args.hidden))
        size = source.stat().st_size
        print(f"checkpoint: {size / 1e6:.1f} MB, widths {args.hidden},{args.hidden} -> {args.keep[0]},{args.keep[1]}")
        modes = ("copy-new", "shrink-new", "core-new", "copy-over", "shrink-over")
        samples: dict[str, list[dict]] = {mode: [] for mode in modes}
        run(MEASURE, "shrink", str(source), str(Path(folder) / "warm.safetensors"))  # warm the page cache
        for _ in range(args.repeats):
            for mode in modes:
                target = Path(folder) / f"out_{mode}.safetensors"
                if mode.endswith("-new"):
                    target.unlink(missing_ok=True)  # untimed: the timed write makes a new file
                elif not target.exists():
                    target.write_bytes(source.read_bytes())  # untimed: a file of this size to write over
                samples[mode].append(run(MEASURE, mode.split("-")[0], str(source), str(target)))
    seconds = {mode: [s["seconds"] for s in values] for mode, values in samples.items()}

    def paired(numerator: str, denominator: str) -> list[float]:
        return [a / b for a, b in zip(seconds[numerator], seconds[denominator])]

    extra = [(s["peak"] - s["baseline"]) / size for s in samples["shrink-new"]]
    absolute = [s["peak"] / size for s in samples["shrink-new"]]
    baseline = statistics.median(s["baseline"] for s in samples["shrink-new"])

    def line(name: str, values: list[float], unit: str = "") -> str:
        return f"{name:<50} min {min(values):.3f}{unit}  median {statistics.median(values):.3f}{unit}  max {max(values):.3f}{unit}"

    print(line("plain file copy to a new file", seconds["copy-new"], " s"))
    print(line("isscompress shrink to a new file", seconds["shrink-new"], " s"))
    print(line("  shrink / copy, new files (paired; goal <= 2)", paired("shrink-new", "copy-new")))
    print(line("surgery alone (no check, no hash), new file", seconds["core-new"], " s"))
    print(line("  surgery alone / copy, new files (paired)", paired("core-new", "copy-new")))
    print(line("plain file copy over an existing file", seconds["copy-over"], " s"))
    print(line("isscompress shrink over an existing file", seconds["shrink-over"], " s"))
    print(line("  shrink / copy, over existing (paired)", paired("shrink-over", "copy-over")))
    print(line("peak RSS above import baseline / file size", extra))
    print(line("peak RSS (whole process) / file size", absolute))
    print(f"import baseline (python + torch + isscompress): {baseline / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
