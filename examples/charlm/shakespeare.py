"""A character-level language model on Tiny Shakespeare, compressed with ISS: the real command lines.

1. splits ../shared/data/tinyshakespeare/input.txt by characters, at line boundaries: the first 90% to train,
   the next 5% to validate, the last 5% to test (into --output, beside copies of the recipes);
2. ``isscompress train`` a 2x256 LSTM (shakespeare-baseline.yaml);
3. ``isscompress run`` ISS fine-tuning with distillation, shrink, recovery and the report (shakespeare-iss.yaml),
   in bits per character.

    python examples/charlm/shakespeare.py [--output runs/shakespeare] [--text PATH] [--quick]
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TEXT = HERE.parents[1] / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


def run(*args: str) -> None:
    print("$ isscompress " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "isscompress", *args], check=True)


def split(text: str, folder: Path) -> None:
    """90 / 5 / 5 by characters, each cut moved to the next line start so no line is split."""
    cuts = [text.index("\n", int(len(text) * f)) + 1 for f in (0.9, 0.95)]
    for name, part in zip(("train", "valid", "test"), (text[:cuts[0]], text[cuts[0]:cuts[1]], text[cuts[1]:])):
        (folder / f"{name}.txt").write_text(part, encoding="utf-8")


def recipe(name: str, folder: Path, quick: bool) -> Path:
    path = folder / name
    shutil.copyfile(HERE / name, path)
    if quick:  # the same commands on a few hundred windows
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["data"].update({"max_train_tokens": 60_000, "max_eval_tokens": 10_000})
        for stage in ("finetune", "recover"):
            if stage in data:
                data[stage]["epochs"] = 1
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/shakespeare"))
    parser.add_argument("--text", type=Path, default=TEXT)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not args.text.is_file():
        sys.exit(f"{args.text} not found: point --text to Tiny Shakespeare's input.txt")
    args.output.mkdir(parents=True, exist_ok=True)
    split(args.text.read_text(encoding="utf-8"), args.output)
    baseline = args.output / "baseline.safetensors"
    if not baseline.exists():
        run("train", "-r", str(recipe("shakespeare-baseline.yaml", args.output, args.quick)), "-o", str(baseline),
            "-w", "256", "-w", "256", "-e", "64")
    run("run", str(baseline), "-r", str(recipe("shakespeare-iss.yaml", args.output, args.quick)),
        "-o", str(args.output / "iss"), "--force")


if __name__ == "__main__":
    main()
