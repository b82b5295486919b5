"""Bad input across every command: a clear message (where, what, what to do), exit code 1, no traceback,
and no output or partial file left behind."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import test_crafted_files as crafted
import torch
from conftest import make_rnn_model
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from isscompress.architectures.stack import LayerSpec, ModelSpec
from isscompress.architectures.stack_module import RecurrentModel
from isscompress.cli import app
from isscompress.io.files import write_checkpoint
from isscompress.io.metadata import Metadata

runner = CliRunner()
WORDS = ["a", "b", "c", "<unk>", "<eos>"]
SPEC = ModelSpec("LSTM", (LayerSpec(4, 6), LayerSpec(6, 5)), vocab_size=len(WORDS))


@pytest.fixture
def world(tmp_path) -> dict[str, Path]:
    """A good model, a good recipe and good text; each case spoils one thing."""
    return make_world(tmp_path)


def make_world(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = tmp_path / "model.safetensors"
    write_checkpoint(model, RecurrentModel(SPEC).canonical_state(),
                     Metadata(family="isscompress", spec=SPEC.to_dict(), vocabulary=tuple(WORDS)))
    text = tmp_path / "text.txt"
    text.write_text(" a b c \n b a \n" * 50)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  train: {text}\n  valid: {text}\nfinetune:\n  epochs: 1\n  batch_size: 4\n"
                      f"  bptt: 5\niss:\n  lambda: 0.001\n")
    out = tmp_path / "out"
    out.mkdir()
    return {"dir": tmp_path, "model": model, "text": text, "recipe": recipe, "out": out}


def _wlm_state() -> dict[str, torch.Tensor]:
    return make_rnn_model(ntoken=23, ninp=6, nhid=6).state_dict()


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        torch.save(content, path)
    return path


def _lying_header(path: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}).encode()
    return _write(path, struct.pack("<Q", len(header)) + header + b"\0" * 64)


def _safetensors(path: Path, tensors: dict) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _state_with(**changes) -> dict:
    state = _wlm_state()
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            state.pop(key)
        else:
            state[key] = value(state[key]) if callable(value) else value
    return state


def _external_h5(folder: Path) -> Path:
    secret = folder / "secret.bin"
    secret.write_bytes(crafted.SECRET)
    return crafted._replace_embedding(crafted._h5(folder), lambda g, n: g.create_dataset(
        n, (30, 8), "<f4", external=[(str(secret), 0, 960)]))


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


# Checkpoint cases: (name, maker(dir) -> path, fragments of the message)
CHECKPOINTS = [
    ("empty", lambda d: _write(d / "e.pt", b""), ["is empty"]),
    ("random bytes", lambda d: _write(d / "r.bin", os.urandom(300)), ["not a checkpoint"]),
    ("truncated zip", lambda d: _write(d / "t.pt", (lambda p: p.read_bytes()[:200])(_write(d / "full.pt", _wlm_state()))),
     ["could not be read", "truncated"]),
    ("lying safetensors header", lambda d: _lying_header(d / "h.safetensors"), ["damaged safetensors"]),
    ("integer weights", lambda d: _safetensors(d / "i.safetensors", _state_with(decoder__bias=torch.zeros(23, dtype=torch.int64))),
     ["'decoder.bias' has dtype torch.int64", "floating point"]),
    ("NaN weights", lambda d: _write(d / "n.pt", _state_with(rnn__weight_hh_l0=_nan)), ["'rnn.weight_hh_l0' contains NaN"]),
    ("Inf weights", lambda d: _write(d / "i.pt", _state_with(encoder__weight=lambda t: t.fill_(float("inf")))),
     ["'encoder.weight' contains NaN or Inf"]),
    ("gates disagree", lambda d: _write(d / "g.pt", _state_with(rnn__bias_ih_l1=torch.zeros(20))),
     ["'rnn.bias_ih_l1' has shape [20], expected [24]"]),
    ("layers disagree", lambda d: _write(d / "l.pt", _state_with(rnn__weight_ih_l1=torch.zeros(24, 7))),
     ["'rnn.weight_ih_l1' has shape [24, 7], expected [24, 6]"]),
    ("decoder vs embedding", lambda d: _write(d / "v.pt", _state_with(decoder__weight=torch.zeros(22, 6))),
     ["'decoder.weight' has shape [22, 6]"]),
    ("optimizer state left in", lambda d: _write(d / "o.pt", _state_with(momentum_buffer=torch.zeros(3))),
     ["'momentum_buffer' is not part of this architecture"]),
    ("missing tensor", lambda d: _write(d / "m.pt", _state_with(rnn__bias_hh_l0=None)), ["'rnn.bias_hh_l0' is missing"]),
    ("unknown layout", lambda d: _safetensors(d / "u.safetensors", {"conv.weight": torch.zeros(2, 2)}),
     ["matches no known model family", "--family"]),
    ("not a state dict", lambda d: _write(d / "s.pt", {"epoch": 3, "note": "hi"}), ["does not contain a state dict"]),
    ("HDF5 bytes from another file", lambda d: _external_h5(d), ["keeps its bytes in another file"]),
    ("zip member declaring 3 GiB", lambda d: crafted._declare_size(
        Path(shutil.copy(crafted.FIXTURES / "k3_lstm_lm.keras", d / "bomb.keras")), "model.weights.h5", 3 * 2**30),
     ["declares 3,221,225,472 bytes"]),
    ("npz of objects", lambda d: crafted._npz_with(d, "objects", np.array([None] * 11, dtype=object)),
     ["dtype object"]),
    ("pickled array without data", lambda d: _write(d / "nodata.pkl", pickle.dumps({"w": crafted._NoData()})),
     ["without its data"]),
    ("module.X beside X", lambda d: _write(d / "twice.pt", {**_wlm_state(), "module.decoder.bias": torch.zeros(23)}),
     ["same weight 'decoder.bias'"]),
    ("Keras list-form config with a null layer", lambda d: crafted._edit_h5_config(
        crafted._h5(d), lambda c: c.__setitem__("config", [None])), ["layer entry 0 that is not a layer"]),
    ("directory", lambda d: d, ["is not a file"]),
    ("missing file", lambda d: d / "absent.safetensors", ["does not exist"]),
]


# Every reader shares one code path: the full matrix for inspect, shrink and report, a sample for the rest.
SAMPLED = {"empty", "random bytes", "lying safetensors header", "NaN weights", "gates disagree", "missing file"}
CHECKPOINT_CASES = [
    pytest.param(command, *case, id=f"{command}-{case[0]}")
    for command in ("inspect", "shrink", "report", "finetune", "eval", "export")
    for case in CHECKPOINTS
    if command in ("inspect", "shrink", "report") or case[0] in SAMPLED
]


@pytest.mark.parametrize("command, name, make, fragments", CHECKPOINT_CASES)
def test_bad_checkpoints(world, command, name, make, fragments, clean_failure) -> None:
    path = make(world["dir"])
    out = world["out"] / "result.safetensors"
    args = {
        "inspect": ["inspect", path],
        "shrink": ["shrink", path, "-o", out],
        "finetune": ["finetune", path, "-r", world["recipe"], "-o", out],
        "eval": ["eval", path, "--data", world["text"]],
        "report": ["report", world["model"], path, "--no-speed"],
        "export": ["export", path, "--format", "torchscript", "-o", out],
    }[command]
    clean_failure(runner.invoke(app, [str(a) for a in args]), *fragments, folder=world["out"], empty=True)




RECIPES = [
    ("not YAML", "data: [\n", ["not valid YAML"]),
    ("empty", "", ["is empty"]),
    ("a list", "- 1\n- 2\n", ["must be a mapping"]),
    ("misspelt key", "finetune:\n  epocs: 2\n", ["line 2", "'epocs'", "Did you mean 'epochs'?"]),
    ("unknown section", "pruning:\n  x: 1\n", ["unknown key 'pruning' at the top level"]),
    ("wrong type", "finetune:\n  batch_size: many\n", ["'finetune.batch_size'", "valid integer"]),
    ("zero lambda", "iss:\n  lambda: 0\n", ["'iss.lambda'", "greater than 0"]),
    ("negative lr", "finetune:\n  lr: -0.1\n", ["'finetune.lr'", "greater than 0"]),
    ("zero epochs", "recover:\n  epochs: 0\n", ["'recover.epochs'", "greater than 0"]),
    ("missing data file", "data:\n  train: nowhere.txt\n", ["line 2", "data.train file", "does not exist"]),
    ("multiplier for a missing layer", "data:\n  train: text.txt\niss:\n  layer_multipliers: {layer7: 2}\n",
     ["'layer7'", "does not have", "layer0, layer1"]),
    ("unknown method", "iss:\n  method: l1\n", ["'iss.method'", "'subgradient', 'proximal', 'one-shot' or 'gradual'"]),
    ("target for a missing layer", "data:\n  train: text.txt\niss:\n  target_widths: {layr1: 2}\n",
     ["iss.target_widths", "'layr1'", "did you mean 'layer1'?"]),
    ("target as wide as the layer", "data:\n  train: text.txt\niss:\n  target_widths: {layer0: 999}\n",
     ["iss.target_widths.layer0 is 999", "would not shrink", "Give a target below"]),
    ("zero target", "iss:\n  target_widths: {layer0: 0}\n", ["'iss.target_widths.layer0'", "greater than 0"]),
    ("reweight out of range", "iss:\n  reweight: 9\n", ["'iss.reweight'", "less than or equal to 4"]),
    ("billion laughs", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
     "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nfinetune: {epochs: *g}\n", ["line 1", "anchors and aliases"]),
    ("a huge wrong value", "finetune:\n  lr: " + "9" * 100_000 + "x\n", ["'finetune.lr'", "(100,001 characters)"]),
    ("data path is a folder", "data:\n  train: .\n", ["line 2", "data.train file", "is a folder, not a file"]),
    ("infinite lambda", "iss:\n  lambda: .inf\n", ["line 2", "'iss.lambda'", "finite number"]),
    ("not-a-number lambda", "iss:\n  lambda: .nan\n", ["line 2", "'iss.lambda'", "finite number"]),
    ("true as lambda", "iss:\n  lambda: true\n", ["line 2", "'iss.lambda'", "true/false is not a number"]),
    ("budget above the original", "iss:\n  target: {macs: 1.5}\n", ["'iss.target'", "1.5 is neither a fraction"]),
    ("seed out of range", "finetune:\n  seed: 1000000000000000000000000000000\n", ["'finetune.seed'", "less than"]),
    ("data path is a device", "data:\n  train: /dev/zero\n", ["data.train file /dev/zero",
                                                                "is not a regular file"]),
]


@pytest.mark.parametrize("name, text, fragments", RECIPES, ids=[r[0] for r in RECIPES])
def test_bad_recipes(world, name, text, fragments, clean_failure) -> None:
    recipe = _write(world["dir"] / "bad.yaml", text)
    result = runner.invoke(app, ["finetune", str(world["model"]), "-r", str(recipe), "-o",
                                 str(world["out"] / "x.safetensors")])
    clean_failure(result, *fragments, folder=world["out"], empty=True)
    assert len(result.stderr) < 2_000  # one paragraph, whatever the recipe holds


TEXTS = [
    ("empty text", b"", ["contains no words"]),
    ("non-UTF-8 text", b" a b \xff\xfe \n", ["not UTF-8"]),
    ("words without <unk> fallback", None, ["not in the vocabulary", "'zebra'"]),
]


@pytest.mark.parametrize("name, content, fragments", TEXTS, ids=[t[0] for t in TEXTS])
def test_bad_text(world, name, content, fragments, clean_failure) -> None:
    model = world["model"]
    if content is None:
        words = ["a", "b", "c", "<eos>", "d"]  # same size as the model's vocabulary, but no <unk>
        vocab = _write(world["dir"] / "vocab.txt", "\n".join(words) + "\n")
        data = _write(world["dir"] / "zebra.txt", " a zebra \n")
        result = runner.invoke(app, ["eval", str(model), "--data", str(data), "--vocab", str(vocab)])
    else:
        data = _write(world["dir"] / "bad.txt", content)
        result = runner.invoke(app, ["eval", str(model), "--data", str(data)])
    clean_failure(result, *fragments, folder=world["out"], empty=True)


def test_crlf_text_is_accepted(world) -> None:
    data = _write(world["dir"] / "crlf.txt", b" a b \r\n c zebra \r\n" * 20)
    result = runner.invoke(app, ["eval", str(world["model"]), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"] > 0


def test_vocabulary_of_the_wrong_size(world, clean_failure) -> None:
    vocab = _write(world["dir"] / "v.txt", "a\nb\n")
    result = runner.invoke(app, ["eval", str(world["model"]), "--data", str(world["text"]), "--vocab", str(vocab)])
    clean_failure(result, "has 2 words", "embedding has 5 rows", folder=world["out"], empty=True)


def test_fp16_and_bf16_are_accepted_and_reported(world) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        state = {k: v.to(dtype) for k, v in _wlm_state().items()}
        path = _safetensors(world["dir"] / f"{dtype}.safetensors", state)
        result = runner.invoke(app, ["inspect", str(path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["model"]["dtype"] == str(dtype).replace("torch.", "")
        out = world["dir"] / f"{dtype}-small.safetensors"
        shrunk = runner.invoke(app, ["shrink", str(path), "-o", str(out)])
        assert shrunk.exit_code == 0, shrunk.output
        written = load_file(out)  # the shrink keeps the file's precision and its unchanged weights bit for bit
        assert {t.dtype for t in written.values()} == {dtype}
        assert torch.equal(written["encoder.weight"], state["encoder.weight"])


OUTPUTS = [
    ("exists", lambda w: _write(w["out"] / "result.safetensors", b"old"), ["already exists", "--force"]),
    ("missing folder", lambda w: w["out"] / "no" / "result.safetensors", ["does not exist"]),
    ("equal to input", lambda w: w["model"], ["is the input file"]),
]


@pytest.mark.parametrize("command", ["shrink", "finetune", "export"])
@pytest.mark.parametrize("name, target, fragments", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_bad_outputs(world, command, name, target, fragments) -> None:
    out = target(world)
    before = out.read_bytes() if out.exists() else None
    args = {"shrink": ["shrink", world["model"], "-o", out],
            "finetune": ["finetune", world["model"], "-r", world["recipe"], "-o", out],
            "export": ["export", world["model"], "--format", "onnx", "-o", out]}[command]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in " ".join(result.stderr.split())
    if before is not None:
        assert out.read_bytes() == before
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")] if out.parent.exists() else True


def test_unwritable_folder(world) -> None:
    folder = Path("/sys") if os.geteuid() == 0 else world["dir"] / "ro"
    if folder != Path("/sys"):
        folder.mkdir()
        folder.chmod(0o500)
    result = runner.invoke(app, ["shrink", str(world["model"]), "-o", str(folder / "x.safetensors")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not writable" in result.stderr or "Could not write" in result.stderr


def test_threshold_that_removes_every_unit(world, clean_failure) -> None:
    result = runner.invoke(app, ["shrink", str(world["model"]), "-o", str(world["out"] / "x.safetensors"),
                                 "-t", "1e6"])
    clean_failure(result, "every unit of layer 0", "threshold below", folder=world["out"], empty=True)


@pytest.mark.parametrize("command", ["shrink", "finetune"])
def test_a_checkpoint_output_named_as_another_format_is_refused(world, command, clean_failure) -> None:
    args = {"shrink": ["shrink", world["model"]], "finetune": ["finetune", world["model"], "-r", world["recipe"]]}
    result = runner.invoke(app, [str(a) for a in args[command]] + ["-o", str(world["out"] / "small.pt")])
    clean_failure(result, "small.pt would hold .safetensors data under a '.pt' name", "Name it small.safetensors",
                  folder=world["out"], empty=True)


def test_finetune_side_files_are_outputs_too(world, clean_failure) -> None:
    out = world["out"] / "tuned.safetensors"
    log = out.with_name(out.name + ".log.jsonl")
    log.write_text("an earlier run's log\n")
    args = ["finetune", str(world["model"]), "-r", str(world["recipe"]), "-o", str(out)]
    clean_failure(runner.invoke(app, args), f"{log} already exists", "--force")
    assert log.read_text() == "an earlier run's log\n" and not out.exists()
    # the train-state file beside the output would be the input itself
    source = world["dir"] / "m.safetensors"
    world["model"].rename(source)
    named_like_state = world["dir"] / "x.safetensors.train-state.pt"
    source.rename(named_like_state)
    before = named_like_state.read_bytes()
    result = runner.invoke(app, ["finetune", str(named_like_state), "-r", str(world["recipe"]), "-o",
                                 str(world["dir"] / "x.safetensors"), "--force"])
    clean_failure(result, "is the input file")
    assert named_like_state.read_bytes() == before


def test_run_refuses_a_file_as_its_folder_and_leaves_nothing_when_it_fails(world, clean_failure) -> None:
    target = world["out"] / "results.txt"
    target.write_text("keep me")
    clean_failure(runner.invoke(app, ["run", str(world["model"]), "-r", str(world["recipe"]), "-o", str(target)]),
                  "is a file", "folder")
    assert target.read_text() == "keep me"
    broken = _write(world["dir"] / "broken.pt", b"\x80garbage")
    folder = world["dir"] / "new-run"
    clean_failure(runner.invoke(app, ["run", str(broken), "-r", str(world["recipe"]), "-o", str(folder)]),
                  "broken.pt")
    assert not folder.exists()


def test_a_log_line_is_written_whole_or_not_at_all(tmp_path) -> None:
    from isscompress.errors import CheckpointError
    from isscompress.outputs import append_line

    log = tmp_path / "log.jsonl"
    append_line(log, '{"step": 1}')
    assert log.read_text() == '{"step": 1}\n'
    with pytest.raises(CheckpointError, match="Could not write the log /dev/full"):
        append_line(Path("/dev/full"), '{"step": 2}')  # a full disk, as Linux provides one


@pytest.mark.parametrize("args, env, expected", [([], {}, 1), (["--threads", "2"], {}, 2),
                                                 ([], {"ISSCOMPRESS_THREADS": "2"}, 2),
                                                 (["--threads", "1"], {"ISSCOMPRESS_THREADS": "2"}, 1)])
def test_threads_come_from_the_option_then_the_environment_then_the_machine(world, monkeypatch, args, env,
                                                                          expected) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # a small machine: one thread unless told otherwise
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["report", str(world["model"]), "--no-speed", "--json", *args])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["environment"]["threads"] == expected
    finally:
        torch.set_num_threads(before)


def test_bad_thread_counts_are_refused(world, monkeypatch, clean_failure) -> None:
    assert runner.invoke(app, ["inspect", str(world["model"]), "--threads", "0"]).exit_code == 2  # Typer: usage
    monkeypatch.setenv("ISSCOMPRESS_THREADS", "many")
    clean_failure(runner.invoke(app, ["inspect", str(world["model"])]), "ISSCOMPRESS_THREADS='many'",
                  "positive whole number")


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
@pytest.mark.parametrize("command", ["finetune", "run", "train", "finetune --arch"])
def test_a_cuda_recipe_without_cuda_is_a_clear_error_on_every_path(world, command, clean_failure) -> None:
    recipe = world["recipe"]
    recipe.write_text(recipe.read_text().replace("finetune:\n", "finetune:\n  device: cuda\n"))
    out = world["out"] / "x.safetensors"
    args = {"finetune": ["finetune", world["model"], "-r", recipe, "-o", out],
            "run": ["run", world["model"], "-r", recipe, "-o", world["out"] / "run"],
            "train": ["train", "-r", recipe, "-o", out, "-w", "4", "-e", "4"]}.get(command)
    if args is None:  # a user's model through --arch, with the factory of the any-model tests
        import test_anymodel_cli as user

        source, arch, _ = user._user_setup(world["dir"], "")
        recipe.write_text("finetune: {device: cuda}\niss: {lambda: 1.0}\n")
        args = ["finetune", source, "--arch", arch, "-r", recipe, "-o", out]
    clean_failure(runner.invoke(app, [str(a) for a in args]), "Device 'cuda' was requested but CUDA is not available",
                  folder=world["out"], empty=True)


def test_help_and_usage_errors_answer_without_importing_torch() -> None:
    import subprocess
    import sys

    probe = "import sys, isscompress.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    usage = subprocess.run([sys.executable, "-m", "isscompress", "shrink"], capture_output=True, text=True)
    assert usage.returncode == 2 and "Missing argument" in usage.stderr
