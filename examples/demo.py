"""The main job on an embedded default, offline, in a few minutes on 2 CPU cores.

1. trains a small 2x128 LSTM language model on the PTB excerpt in examples/data (the baseline),
2. compresses it with `isscompress run`: ISS fine-tuning, shrink, recovery, and the report.

    python examples/demo.py [--output runs/demo] [--quick]

Each step is the real command line, printed before it runs. ``--quick`` runs the same commands on
recipes cut to a few hundred steps (what CI runs in a fresh environment, to prove the install works).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RECIPES = HERE / "ptb"
QUICK = {"max_train_tokens": 20000, "max_eval_tokens": 4000}  # per recipe data section; every stage 1 epoch


def run(*args: str) -> None:
    command = [sys.executable, "-m", "isscompress", *args]
    print("$ isscompress " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True)


def recipe(name: str, folder: Path, quick: bool) -> Path:
    """The shipped recipe, or (quick) a copy of it with less data and one epoch per stage."""
    path = RECIPES / name
    if not quick:
        return path
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key in ("train", "valid", "test"):
        data["data"][key] = str((RECIPES / data["data"][key]).resolve())
    data["data"].update(QUICK)
    for stage in ("finetune", "recover"):
        if stage in data:
            data[stage]["epochs"] = 1
    quick_path = folder / f"quick-{name}"
    quick_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return quick_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    parser.add_argument("--quick", action="store_true", help="The same commands on a few hundred steps.")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    baseline = args.output / "baseline.safetensors"
    if not baseline.exists():
        run("train", "--recipe", str(recipe("demo-baseline.yaml", args.output, args.quick)), "-o", str(baseline),
            "--width", "128", "--width", "128", "--embedding", "128")
    run("run", str(baseline), "--recipe", str(recipe("demo.yaml", args.output, args.quick)),
        "-o", str(args.output / "iss"), "--force")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
