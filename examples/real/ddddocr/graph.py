"""ddddocr 1.6.1's whole OCR graph fine-tuned by isscompress itself: ``common.onnx`` runs as a PyTorch module
(``isscompress.OnnxModule``, checked against ONNX Runtime when it loads), learns label-free from the shipped graph on
captcha images, and is written back as an .onnx whose removed units are zero; ``shrink`` then makes it smaller.

    isscompress finetune model/common.onnx --arch graph.py:make -r recipe.yaml -o out/graph-tuned.onnx
    isscompress shrink out/graph-tuned.onnx -o out/graph-small.onnx
    isscompress report model/common.onnx out/graph-small.onnx --arch graph.py:make
    python tail.py evaluate model/common.onnx out/graph-small.onnx      # ddddocr's own pipeline, 1000 captchas

(tail.py's docstring has the fetch commands.) ``make()`` gives the module, an example input (two held-out images),
the training captchas as ddddocr preprocesses them (grey, 64 pixels high), and ``evaluate``: ddddocr's CTC decoding
of the module's logits on the same 1000 held-out captchas tail.py scores.
"""

from __future__ import annotations

import io
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

import isscompress

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tail import BATCH, METRICS, cached, ddddocr_reader, scores  # noqa: E402,F401  (METRICS: report's)


def images(blobs: list[bytes]) -> torch.Tensor:
    """``[images, 1, 64, width]``: each image as ddddocr feeds its graph."""
    from PIL import Image

    engine = ddddocr_reader().ocr_engine
    return torch.from_numpy(np.concatenate([engine._preprocess_image(Image.open(io.BytesIO(blob)), png_fix=False)
                                            for blob in blobs]))


@lru_cache(maxsize=1)
def data() -> dict:
    """Training images, held-out images and texts (out/images.pt)."""
    return cached("images.pt", images)


def evaluate(model: nn.Module) -> dict[str, float]:
    """ddddocr's CTC decoding of the graph's logits on the held-out captchas."""
    found, engine = data(), ddddocr_reader().ocr_engine
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in found["eval"].split(BATCH)], dim=1).numpy()
    predictions = [engine._process_text_output(logits[:, i:i + 1, :]) for i in range(logits.shape[1])]
    return scores(predictions, found["eval_texts"])


def make():
    found = data()
    model = isscompress.onnx_module(HERE / "model" / "common.onnx")
    return model, (found["eval"][:2],), [(chunk,) for chunk in found["train"].split(BATCH)], evaluate
