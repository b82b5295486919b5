"""Faults: signals in the middle of fine-tuning, a diverging loss, a full disk, a malicious pickle."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import isscompress
from isscompress.architectures.stack import LayerSpec, ModelSpec
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.errors import ShrinkError
from isscompress.io.files import write_checkpoint
from isscompress.io.metadata import Metadata
from isscompress.verbs.finetune import finetune, side_files

WORDS = [f"w{i}" for i in range(30)] + ["<unk>", "<eos>"]
SPEC = ModelSpec("LSTM", (LayerSpec(8, 12), LayerSpec(12, 10)), vocab_size=len(WORDS))


@pytest.fixture
def setup(tmp_path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = tmp_path / "model.safetensors"
    write_checkpoint(model, RecurrentModel(SPEC).canonical_state(),
                     Metadata(family="isscompress", spec=SPEC.to_dict(), vocabulary=tuple(WORDS)))
    rng = random.Random(0)
    text = tmp_path / "text.txt"
    text.write_text("".join(" ".join(rng.choice(WORDS[:30]) for _ in range(12)) + "\n" for _ in range(400)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  train: {text}\nfinetune:\n  epochs: 2\n  batch_size: 4\n  bptt: 8\n  dropout: 0.2\n"
                      f"  save_every: 5\n  log_every: 5\n  lr: 2.0\n  device: cpu\niss:\n  lambda: 0.003\n  method: proximal\n")
    return model, recipe


def _start(model: Path, recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "isscompress", "finetune", str(model), "-r", str(recipe),
                             "-o", str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_saves(out: Path, process: subprocess.Popen, count: int) -> None:
    log = side_files(out)[1]
    while process.poll() is None:  # no wall-clock limit: a loaded machine is slow, not broken
        if out.exists() and log.exists() and log.read_text().count('"event": "step"') >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no progress: {process.poll()} {process.stderr.read() if process.poll() is not None else ''}")


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow),
                                 signal.SIGKILL])  # SIGTERM takes SIGINT's handler: run with -m slow
def test_signal_then_resume_reaches_the_uninterrupted_weights(tmp_path, setup, sig) -> None:
    model, recipe = setup
    straight = tmp_path / "straight.safetensors"
    finetune(model, recipe, straight)
    out = tmp_path / "out.safetensors"
    process = _start(model, recipe, out)
    _wait_for_saves(out, process, random.Random(sig).randint(2, 8))
    process.send_signal(sig)
    process.wait()
    if sig == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 130, process.stderr.read()
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file remains"
    assert isscompress.load(out).spec.widths == [12, 10]  # the last complete checkpoint loads
    resumed = _start(model, recipe, out, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read()
    a, b = isscompress.load_checkpoint(straight).state, isscompress.load_checkpoint(out).state
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_diverging_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, setup) -> None:
    model, recipe = setup
    bad = tmp_path / "bad.yaml"  # an absurd learning rate and no clipping
    bad.write_text(recipe.read_text().replace("lr: 2.0", "lr: 1.0e+30").replace("finetune:\n", "finetune:\n  clip: null\n"))
    out = tmp_path / "out.safetensors"
    process = _start(model, bad, out)
    assert process.wait() == 1
    stderr = " ".join(process.stderr.read().split())
    assert "NaN or Inf" in stderr and "finetune.lr" in stderr and "Traceback" not in stderr
    if out.exists():  # whatever was saved before the divergence is finite and loads
        assert all(torch.isfinite(t).all() for t in isscompress.load_checkpoint(out).state.values())


def test_full_disk_leaves_the_previous_output_intact(tmp_path, setup) -> None:
    model, _ = setup
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"previous")
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); "
            "from isscompress.cli import app; sys.argv = ['isscompress'] + sys.argv[1:]; app()")
    done = subprocess.run([sys.executable, "-c", code, "shrink", str(model), "-o", str(out), "--force"],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert "Could not write" in done.stderr and "Traceback" not in done.stderr
    assert out.read_bytes() == b"previous"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_malicious_pickle_is_refused_and_its_command_does_not_run(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"rnn.weight_ih_l0": Payload()}, path)
    done = subprocess.run([sys.executable, "-m", "isscompress", "inspect", str(path)], capture_output=True, text=True)
    assert done.returncode == 1 and "pickled Python objects" in " ".join(done.stderr.split())
    assert not marker.exists()


@pytest.mark.parametrize("key", ["layers.0.weight_hh_l0", "layers.1.bias_ih_l0", "layers.1.weight_ih_l0", "decoder.weight"])
def test_a_surgery_bug_is_caught_by_the_output_check_and_nothing_is_written(tmp_path, setup, monkeypatch, key) -> None:
    """The cheap probe (two steps in each of two calls) still sees one swapped pair of kept weights in any tensor,
    including the recurrent weights that only the second step reads."""
    import isscompress.verbs.shrink as shrink_verb

    model, _ = setup
    honest = shrink_verb.shrink_state_dict

    def swapped(state, sets, kept):
        small = honest(state, sets, kept)
        tensor = small[key].clone()
        axis = 1 if key.endswith(("weight_hh_l0", "weight_ih_l0", "decoder.weight")) else 0
        order = torch.arange(tensor.shape[axis])
        order[[0, 1]] = order[[1, 0]]
        small[key] = tensor.index_select(axis, order)
        return small

    monkeypatch.setattr(shrink_verb, "shrink_state_dict", swapped)
    loaded = isscompress.load_checkpoint(model)
    kept = {gs.name: torch.arange(gs.size - 3) for gs in loaded.group_sets}  # three dead units per layer
    masked = dataclasses.replace(loaded, state=isscompress.mask_state_dict(loaded.state, loaded.group_sets, kept))
    output = tmp_path / "small.safetensors"
    with pytest.raises(ShrinkError, match="differ from the masked model"):
        shrink_verb.shrink(masked, output, threshold=0.0)
    assert not output.exists()
