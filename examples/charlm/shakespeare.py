"""A character-level language model on Tiny Shakespeare, compressed with ISS: the real command lines.

1. ``isscompress train`` a 2x256 LSTM (shakespeare-baseline.yaml: ``data.split`` cuts
   ../shared/data/tinyshakespeare/input.txt at line boundaries, 90% / 5% / 5%, ``data.level: char``);
2. ``isscompress run`` ISS fine-tuning with distillation, shrink, recovery and the report (shakespeare-iss.yaml),
   in bits per character.

    python examples/charlm/shakespeare.py [--output runs/shakespeare] [--quick]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def run(*args: str) -> None:
    print("$ isscompress " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "isscompress", *args], check=True)


def recipe(name: str, folder: Path, quick: bool) -> Path:
    """The shipped recipe, or (quick) a copy with less data and one epoch per stage."""
    path = HERE / name
    if not quick:
        return path
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["data"]["split"] = str((HERE / data["data"]["split"]).resolve())
    data["data"].update({"max_train_tokens": 20_000, "max_eval_tokens": 4_000})
    for stage in ("finetune", "recover"):
        if stage in data:
            data[stage]["epochs"] = 1
    quick_path = folder / f"quick-{name}"
    quick_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return quick_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/shakespeare"))
    parser.add_argument("--quick", action="store_true", help="The same commands on a few hundred windows.")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    baseline = args.output / "baseline.safetensors"
    if not baseline.exists():
        run("train", "-r", str(recipe("shakespeare-baseline.yaml", args.output, args.quick)), "-o", str(baseline),
            "-w", "256", "-w", "256", "-e", "64")
    run("run", str(baseline), "-r", str(recipe("shakespeare-iss.yaml", args.output, args.quick)),
        "-o", str(args.output / "iss"), "--force")


if __name__ == "__main__":
    main()
