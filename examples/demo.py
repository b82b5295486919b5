"""The main job on an embedded default, offline, in a few minutes on 2 CPU cores.

1. trains a small 2x128 LSTM language model on the PTB excerpt in examples/data (the baseline),
2. compresses it with `isscompress run`: ISS fine-tuning, shrink, recovery, and the report.

    python examples/demo.py [--output runs/demo]

Each step is the real command line, printed before it runs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(*args: str) -> None:
    command = [sys.executable, "-m", "isscompress", *args]
    print("$ isscompress " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    baseline = args.output / "baseline.safetensors"
    if not baseline.exists():
        run("train", "--recipe", str(HERE / "ptb" / "demo-baseline.yaml"), "-o", str(baseline),
            "--width", "128", "--width", "128", "--embedding", "128")
    run("run", str(baseline), "--recipe", str(HERE / "ptb" / "demo.yaml"), "-o", str(args.output / "iss"), "--force")


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)
