"""Inference speed at the paper's scale, on the paths a deployer would choose, measured side by side.

A dense 2-layer LSTM language model (10,000 words) against its ISS shape — 2x1500 against (373, 315), the
paper's result, and 2x650 against (200, 180) — random weights (speed does not depend on their values).
Every path runs interleaved with its pair in one process, so both see the same machine load:

- ``eager-native``: PyTorch eager, its native RNN kernel (isscompress's choice for token-by-token decoding);
- ``eager-onednn``: PyTorch eager, oneDNN's RNN kernel (PyTorch's CPU default);
- ``torchscript``: the exported TorchScript module (``isscompress export -f torchscript``);
- ``onnxruntime``: the exported ONNX model in ONNX Runtime (``-f onnx``), when onnxruntime is installed;
- ``int8``: TorchScript after dynamic int8 quantisation (``--quantize int8``).

Workloads: decoding one token at a time at batch 1 (``decode``), and scoring 35-token windows at batch 20.
Prints a Markdown table: tokens/s of both models, the speed-up (median of per-repetition ratios) and the
speed-up divided by the multiply-add ratio.

    python examples/benchmarks/speed.py [--sizes 1500:373,315 650:200,180] [--repeats 5] [--threads 1]

An internals benchmark: it times isscompress's own runtimes (deploy/runtimes.py, deploy/quantize.py) and kernel
switch directly, on models built from random weights, which the public verbs (export, report) wrap.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics

import torch

from isscompress.architectures.stack import LayerSpec, ModelSpec
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.deploy.quantize import quantize_int8
from isscompress.deploy.runtimes import TorchScriptModel, default_path, runtime
from isscompress.kernels import rnn_kernel
from isscompress.measure.speed import run_once

VOCAB = 10_000
WORKLOADS = {"decode b=1": (1, 1, 100), "score b=20x35": (20, 35, 35)}  # batch, steps per call, steps


def language_model(widths: list[int], embed: int) -> RecurrentModel:
    inputs = [embed] + widths[:-1]
    spec = ModelSpec("LSTM", tuple(LayerSpec(i, w) for i, w in zip(inputs, widths)), vocab_size=VOCAB)
    torch.manual_seed(0)
    return RecurrentModel(spec).eval()


def paths(model: RecurrentModel) -> dict:
    """path name -> (PyTorch RNN kernel to force, or None, and the model on that runtime)."""
    found = {"eager-native": ("native", model), "eager-onednn": ("onednn", model),
             "torchscript": ("native", runtime(model, "torchscript")),
             "int8": ("native", TorchScriptModel(quantize_int8(model), like=model))}
    if default_path(model) == "onnxruntime":  # installed, and ONNX can express the model
        with contextlib.redirect_stdout(io.StringIO()):
            found["onnxruntime"] = (None, runtime(model, "onnxruntime"))
    return found


@torch.inference_mode()
def compare(dense: RecurrentModel, small: RecurrentModel, repeats: int) -> list[dict]:
    mac_ratio = sum(dense.spec.macs_per_token().values()) / sum(small.spec.macs_per_token().values())
    rows = []
    dense_paths, small_paths = paths(dense), paths(small)
    for path, (kernel, dense_runner) in dense_paths.items():
        small_runner = small_paths[path][1]
        for workload, (batch, per_call, steps) in WORKLOADS.items():
            tokens = dense.spec.probe_inputs(steps=steps, batch=batch, seed=1)
            times = {"dense": [], "small": []}
            with (rnn_kernel(kernel) if kernel else contextlib.nullcontext()):
                for runner in (dense_runner, small_runner):
                    run_once(runner, tokens, per_call)
                for _ in range(repeats):
                    for name, runner in (("dense", dense_runner), ("small", small_runner)):
                        times[name].append(run_once(runner, tokens, per_call))
            speedup = statistics.median(d / s for d, s in zip(times["dense"], times["small"]))
            rows.append({"path": path, "workload": workload, "dense_tok_s": batch * steps / statistics.median(times["dense"]),
                         "small_tok_s": batch * steps / statistics.median(times["small"]), "speedup": speedup,
                         "mac_ratio": mac_ratio, "of_mac_ratio": speedup / mac_ratio})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1500:373,315", "650:200,180"],
                        help="WIDTH:SMALL1,SMALL2 — a dense 2xWIDTH model and its shrunk widths")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), vocabulary {VOCAB}, {args.repeats} repetitions\n")
    print("| model | path | workload | dense tok/s | shrunk tok/s | speed-up | MAC ratio | speed-up / MAC ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        width, small = size.split(":")
        widths = [int(w) for w in small.split(",")]
        dense, shrunk = language_model([int(width)] * 2, int(width)), language_model(widths, int(width))
        for row in compare(dense, shrunk, args.repeats):
            print(f"| 2x{width} -> ({small}) | {row['path']} | {row['workload']} | {row['dense_tok_s']:,.0f} | "
                  f"{row['small_tok_s']:,.0f} | {row['speedup']:.2f}x | {row['mac_ratio']:.2f} | "
                  f"{row['of_mac_ratio']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
