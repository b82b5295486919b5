"""Compress g2pM 0.1.2.5's shipped model at several MAC budgets; polyphone accuracy on pypinyin-labelled phrases.

    pip download g2pM==0.1.2.5 pypinyin==0.55.0 --no-deps -d wheels/
    unzip -j wheels/g2pM-0.1.2.5-py3-none-any.whl '*/np_ckpt.pkl' '*/char2idx.pkl' '*/class2idx.pkl' \\
        '*/digest_cedict.pkl' -d model/
    unzip -j wheels/pypinyin-0.55.0-py2.py3-none-any.whl 'pypinyin/phrases_dict.json' -d model/
    python run.py [--budgets 0.75 0.5 0.35 0.25] [--methods gradual-taylor one-shot one-shot-taylor-ls proximal] [--recover]
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from sweep import Example, main  # noqa: E402

if __name__ == "__main__":
    main(Example(HERE, f"{HERE / 'polyphone.py'}:make", HERE / "model" / "np_ckpt.pkl", "accuracy", iss_lambda=10.0))
