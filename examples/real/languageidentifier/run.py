"""Compress languageidentifier 1.1.1's shipped model at several MAC budgets; accuracy on held-out catalogs.

    pip download languageidentifier==1.1.1 --no-deps -d wheels/
    unzip -j wheels/LanguageIdentifier-1.1.1-py3-none-any.whl '*/LID_mixed_model.pkl' -d model/
    python run.py [--budgets 0.75 0.5 0.35 0.25] [--methods gradual-taylor one-shot one-shot-taylor-ls proximal] [--recover]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from sweep import Example, main  # noqa: E402

if __name__ == "__main__":
    main(Example(HERE, f"{HERE / 'lid.py'}:make", HERE / "model" / "LID_mixed_model.pkl", "accuracy"))
