"""ddddocr 1.6.1's OCR model (``common.onnx``, its ``beta=True`` model): 21 convolutions, then a bidirectional LSTM
of 512 units per direction and a 1024 -> 8210 Gemm read by CTC. The graph ships without its training code, so the
recurrent tail is fine-tuned in PyTorch and the ONNX file is shrunk by isscompress's ONNX path (graph.py fine-tunes
the whole graph instead, through isscompress.OnnxModule, with no conversion script):

    python tail.py from-onnx model/common.onnx model/tail.safetensors    # the tail's weights, gates reordered
    isscompress finetune model/tail.safetensors --arch tail.py:make -r recipe.yaml -o out/tuned.safetensors
    python tail.py to-onnx out/tuned.safetensors out/tuned.onnx          # back into the graph (zeroed units)
    isscompress shrink out/tuned.onnx -o out/small.onnx                  # checked in ONNX Runtime
    isscompress report model/common.onnx out/small.onnx
    python tail.py evaluate model/common.onnx out/small.onnx             # ddddocr's own pipeline, 1000 captchas

The fetch commands (nothing is downloaded at run time; ddddocr imports OpenCV):

    pip download ddddocr==1.6.1 captcha==0.7.1 --no-deps -d wheels/
    unzip -q wheels/ddddocr-1.6.1-py3-none-any.whl -d wheels/ddddocr && unzip -q wheels/captcha-0.7.1-py3-none-any.whl -d wheels/captcha
    mkdir -p model && cp wheels/ddddocr/ddddocr/common.onnx model/ && pip install opencv-python-headless Pillow

``make()`` (for ``--arch``) gives the tail, its inputs — the convolutions' output for captcha images that the
``captcha`` package draws from known text, computed once by ONNX Runtime from the shipped graph and cached in
``out/`` — and ``evaluate``: sequence and character accuracy (case-insensitive, as ddddocr reads captchas) of
ddddocr's own CTC decoding of the tail's logits on 1000 held-out captchas.
"""

from __future__ import annotations

import io
import random
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "wheels" / "ddddocr"), str(HERE / "wheels" / "captcha")]
ONNX_TO_TORCH = [0, 2, 3, 1]  # ONNX's gate blocks i, o, f, c -> PyTorch's i, f, g, o
TORCH_TO_ONNX = [0, 3, 1, 2]
TRAIN, EVAL, BATCH = 2000, 1000, 25
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
METRICS = {"sequence accuracy": {"better": "higher"}, "character accuracy": {"better": "higher"}}


class Tail(nn.Module):
    """The graph after its convolutions: ``[steps, batch, 512]`` features -> ``[steps, batch, 8210]`` logits."""

    def __init__(self, inputs: int = 512, hidden: int = 512, classes: int = 8210) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, bidirectional=True)
        self.out = nn.Linear(2 * hidden, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(features)[0])


def _blocks(matrix: np.ndarray, order: list[int]) -> np.ndarray:
    return np.concatenate([np.split(matrix, 4, axis=0)[i] for i in order], axis=0)


def _graph_names(model) -> tuple[str, str, str, str, str, str]:
    """The LSTM's input and its W, R, B initializers, and the Gemm's weight and bias."""
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    return lstm.input[0], lstm.input[1], lstm.input[2], lstm.input[3], gemm.input[1], gemm.input[2]


def from_onnx(source: Path, output: Path) -> None:
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import save_file

    model = onnx.load(str(source))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    _, w, r, b, gemm_w, gemm_b = _graph_names(model)
    state = {}
    for d, suffix in enumerate(("", "_reverse")):
        state[f"lstm.weight_ih_l0{suffix}"] = _blocks(arrays[w][d], ONNX_TO_TORCH)
        state[f"lstm.weight_hh_l0{suffix}"] = _blocks(arrays[r][d], ONNX_TO_TORCH)
        wb, rb = np.split(arrays[b][d], 2)
        state[f"lstm.bias_ih_l0{suffix}"] = _blocks(wb, ONNX_TO_TORCH)
        state[f"lstm.bias_hh_l0{suffix}"] = _blocks(rb, ONNX_TO_TORCH)
    state["out.weight"], state["out.bias"] = arrays[gemm_w], arrays[gemm_b]
    save_file({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}, str(output))


def to_onnx(tuned: Path, output: Path, source: Path = HERE / "model" / "common.onnx") -> None:
    import onnx
    from onnx import numpy_helper
    from safetensors.torch import load_file

    state = {k: v.numpy() for k, v in load_file(str(tuned)).items()}
    model = onnx.load(str(source))
    _, w, r, b, gemm_w, gemm_b = _graph_names(model)
    suffixes = ("", "_reverse")
    arrays = {
        w: np.stack([_blocks(state[f"lstm.weight_ih_l0{s}"], TORCH_TO_ONNX) for s in suffixes]),
        r: np.stack([_blocks(state[f"lstm.weight_hh_l0{s}"], TORCH_TO_ONNX) for s in suffixes]),
        b: np.stack([np.concatenate([_blocks(state[f"lstm.bias_ih_l0{s}"], TORCH_TO_ONNX),
                                     _blocks(state[f"lstm.bias_hh_l0{s}"], TORCH_TO_ONNX)]) for s in suffixes]),
        gemm_w: state["out.weight"], gemm_b: state["out.bias"],
    }
    for tensor in model.graph.initializer:
        if tensor.name in arrays:
            tensor.CopyFrom(numpy_helper.from_array(arrays[tensor.name].astype(np.float32), tensor.name))
    onnx.save(model, str(output))


def captchas(count: int, seed: int) -> tuple[list[str], list[bytes]]:
    """``count`` 4-character captchas drawn by the captcha package from known text (160 x 60, as it draws them)."""
    from captcha.image import ImageCaptcha

    random.seed(seed)  # the package draws its noise with the random module
    rng = random.Random(seed)
    generator = ImageCaptcha(width=160, height=60)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(4)) for _ in range(count)]
    return texts, [generator.generate(text).getvalue() for text in texts]


@lru_cache(maxsize=1)
def ddddocr_reader():
    """ddddocr's own reader of the beta model (common.onnx): its preprocessing and its CTC decoding."""
    import ddddocr

    return ddddocr.DdddOcr(show_ad=False, beta=True)


def features(images: list[bytes], source: Path = HERE / "model" / "common.onnx") -> torch.Tensor:
    """The convolutions' output (the LSTM's input) for each image, ``[steps, images, 512]``, by ONNX Runtime."""
    import onnx
    import onnxruntime
    from PIL import Image

    model = onnx.load(str(source))
    name = _graph_names(model)[0]
    model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    engine = ddddocr_reader().ocr_engine
    found = [session.run([name], {session.get_inputs()[0].name: engine._preprocess_image(
        Image.open(io.BytesIO(image)), png_fix=False)})[0] for image in images]
    return torch.from_numpy(np.concatenate(found, axis=1))


def cached(name: str, inputs: Callable[[list[bytes]], torch.Tensor]) -> dict:
    """The training and held-out captchas as ``inputs`` makes them (and the held-out texts): made once, then read
    from out/``name``."""
    cache = HERE / "out" / name
    if cache.exists():
        return torch.load(cache)
    _, train_images = captchas(TRAIN, seed=1)
    eval_texts, eval_images = captchas(EVAL, seed=2)
    found = {"train": inputs(train_images), "eval": inputs(eval_images), "eval_texts": eval_texts}
    cache.parent.mkdir(exist_ok=True)
    torch.save(found, cache)
    return found


@lru_cache(maxsize=1)
def data() -> dict:
    """Training features, held-out features and texts (out/features.pt)."""
    return cached("features.pt", features)


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def scores(predictions: list[str], texts: list[str]) -> dict[str, float]:
    """Sequence and character accuracy (1 - edit distance / length), case-insensitive, with each half's."""
    half = len(texts) // 2
    sequence = [float(p.lower() == t) for p, t in zip(predictions, texts)]
    character = [1 - _edit_distance(p.lower(), t) / len(t) for p, t in zip(predictions, texts)]
    found = {}
    for name, values in (("sequence accuracy", sequence), ("character accuracy", character)):
        found[name] = float(np.mean(values))
        found[f"{name} (half A)"], found[f"{name} (half B)"] = float(np.mean(values[:half])), float(np.mean(values[half:]))
    return found


def evaluate(model: nn.Module) -> dict[str, float]:
    """ddddocr's CTC decoding of the tail's logits on the held-out captchas."""
    found, engine = data(), ddddocr_reader().ocr_engine
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in found["eval"].split(BATCH, dim=1)], dim=1).numpy()
    predictions = [engine._process_text_output(logits[:, i:i + 1, :]) for i in range(logits.shape[1])]
    return scores(predictions, found["eval_texts"])


def make():
    found = data()
    batches = [(chunk,) for chunk in found["train"].split(BATCH, dim=1)]
    return Tail(), (found["eval"][:, :2],), batches, evaluate


def evaluate_graphs(paths: list[str]) -> None:
    """ddddocr's whole pipeline (its preprocessing, the graph in ONNX Runtime, its decoding) on each .onnx."""
    import onnxruntime

    texts, images = captchas(EVAL, seed=2)
    reader = ddddocr_reader()
    for path in paths:
        reader.ocr_engine.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        found = scores([reader.classification(image) for image in images], texts)
        print(path, " ".join(f"{k} {v:.3f}" for k, v in found.items()))


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "from-onnx":
        from_onnx(Path(arguments[0]), Path(arguments[1]))
    elif command == "to-onnx":
        to_onnx(Path(arguments[0]), Path(arguments[1]))
    elif command == "evaluate":
        evaluate_graphs(arguments)
    else:
        sys.exit(f"unknown command {command!r}: from-onnx, to-onnx or evaluate")
