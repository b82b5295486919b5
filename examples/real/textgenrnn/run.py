"""Compress textgenrnn 2.0.0's shipped model at several MAC budgets; bits per character on Tiny Shakespeare.

    pip download textgenrnn==2.0.0 --no-deps -d wheels/
    tar xzf wheels/textgenrnn-2.0.0.tar.gz -C wheels/ && mkdir -p model
    cp wheels/textgenrnn-2.0.0/textgenrnn/textgenrnn_weights.hdf5 wheels/textgenrnn-2.0.0/textgenrnn/textgenrnn_vocab.json model/
    python run.py [--budgets 0.75 0.5 0.35 0.25] [--methods gradual-taylor one-shot one-shot-taylor-ls proximal] [--recover]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from sweep import Example, main  # noqa: E402

if __name__ == "__main__":
    main(Example(HERE, f"{HERE / 'textgen.py'}:make", HERE / "model" / "textgenrnn_weights.hdf5",
                 "bits per character", higher_is_better=False, iss_lambda=135.0))
