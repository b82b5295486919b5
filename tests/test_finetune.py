"""Fine-tuning on real PTB text: the whole recipe, resume after a signal, and DDP with 2 processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import _recipe
from typer.testing import CliRunner

import isscompress
from isscompress.cli import app
from isscompress.core.groups import all_unit_norms
from isscompress.io.files import write_checkpoint
from isscompress.verbs.finetune import finetune, side_files

runner = CliRunner()


@pytest.mark.parametrize("method, lam, zero, targets", [("proximal", 0.03, 0, [20, 15]),
                                                        ("subgradient", 0.02, 0.005, None)])
def test_whole_recipe_on_ptb_text_shrinks_and_reports(tmp_path, small_lm, method, lam, zero, targets) -> None:
    out = tmp_path / "run"
    extra = f"target_widths: {{layer0: {targets[0]}, layer1: {targets[1]}}}\n  reweight: 1.0" if targets else ""
    recipe = _recipe(tmp_path, method=method, lam=lam, zero=zero, iss_extra=extra)
    result = runner.invoke(app, ["run", str(small_lm), "-r", str(recipe),
                                 "-o", str(out), "--repeats", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    widths = [layer["width_after"] for layer in report["layers"]]
    assert widths[0] < 24 and widths[1] < 20, widths
    if targets:  # the recovery stage runs on the shrunk model; the targets held through the ISS stage
        assert widths == targets  # the proximal step never removes units past a target
    assert report["mac_ratio"] > 1
    before, after = (report["perplexity"][k]["perplexity"] for k in ("before", "after"))
    assert after < before, (before, after)  # small_lm is untrained: fine-tuning and recovery must teach it something
    recovered = isscompress.load(out / "recovered.safetensors")
    assert recovered.spec.widths == widths
    log = [json.loads(line) for line in side_files(out / "finetuned.safetensors")[1].read_text().splitlines()]
    epochs = [e for e in log if e["event"] == "epoch"]
    assert epochs and all(e["valid_ppl"] > 1 for e in epochs)
    assert "perplexity" in result.stdout and "multiply-adds" in result.stdout


def _alive(path: Path) -> dict[str, int]:
    checkpoint = isscompress.load_checkpoint(path)
    return {name: int((norms > 1e-4).sum()) for name, norms in all_unit_norms(checkpoint.state,
                                                                              checkpoint.group_sets).items()}


@pytest.mark.parametrize("method", ["proximal", "subgradient"])
def test_target_widths_stop_the_shrinking_where_asked(tmp_path, small_lm, method) -> None:
    lam, zero = (0.03, 0) if method == "proximal" else (0.15, 0.005)
    free = _alive(finetune(small_lm, _recipe(tmp_path, method=method, lam=lam, zero=zero),
                           tmp_path / "free.safetensors").output)
    sizes = {"layer0": 24, "layer1": 20}
    assert all(free[name] <= size - 4 for name, size in sizes.items()), free  # lambda alone removes 4+ units
    targets = {name: (free[name] + size) // 2 for name, size in sizes.items()}
    recipe = _recipe(tmp_path, method=method, lam=lam, zero=zero,
                     iss_extra=f"target_widths: {{layer0: {targets['layer0']}, layer1: {targets['layer1']}}}")
    targeted = _alive(finetune(small_lm, recipe, tmp_path / "targeted.safetensors").output)
    for name, target in targets.items():  # proximal: exactly the target; subgradient may pass it by a unit or two
        assert target - (0 if method == "proximal" else 2) <= targeted[name] <= target, (name, free, targeted)


def test_reweighting_spares_strong_units(tmp_path, small_lm) -> None:
    plain = finetune(small_lm, _recipe(tmp_path, lam=0.01), tmp_path / "plain.safetensors").output
    recipe = _recipe(tmp_path, lam=0.01, iss_extra="reweight: 2.0")
    weighted = finetune(small_lm, recipe, tmp_path / "weighted.safetensors").output
    before = isscompress.load_checkpoint(small_lm)
    start = all_unit_norms(before.state, before.group_sets)
    ends = {name: all_unit_norms(c.state, c.group_sets) for name, c in
            (("plain", isscompress.load_checkpoint(plain)), ("weighted", isscompress.load_checkpoint(weighted)))}
    strongest = {name: norms.argmax() for name, norms in start.items()}
    for name, unit in strongest.items():  # the strongest unit keeps more of its norm when lambda is reweighted
        assert ends["weighted"][name][unit] > ends["plain"][name][unit], name


def test_resume_after_sigint_reaches_the_uninterrupted_weights(tmp_path, small_lm) -> None:
    recipe = _recipe(tmp_path, extra="", lam=0.01)
    straight = tmp_path / "straight.safetensors"
    finetune(small_lm, recipe, straight)

    interrupted = tmp_path / "interrupted.safetensors"

    def interrupt(event):
        if event["event"] == "step" and event["step"] == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(isscompress.errors.Interrupted):
        finetune(small_lm, recipe, interrupted, on_event=interrupt)
    assert isscompress.load_checkpoint(interrupted).state  # the saved state is a complete checkpoint
    finetune(small_lm, recipe, interrupted, resume=True)
    a, b = isscompress.load_checkpoint(straight).state, isscompress.load_checkpoint(interrupted).state
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_recovery_finetune_of_a_shrunk_model_keeps_its_widths(tmp_path, small_lm) -> None:
    shrunk = tmp_path / "shrunk.safetensors"
    checkpoint = isscompress.load_checkpoint(small_lm)
    kept = {"layer0": torch.arange(10), "layer1": torch.arange(5, 20)}
    sparse = tmp_path / "sparse.safetensors"
    write_checkpoint(sparse, isscompress.mask_state_dict(checkpoint.state, checkpoint.group_sets, kept),
                     checkpoint.metadata)
    isscompress.shrink(sparse, shrunk)
    out = tmp_path / "recovered.safetensors"
    result = runner.invoke(app, ["finetune", str(shrunk), "-r", str(_recipe(tmp_path)), "-o", str(out),
                                 "--stage", "recover"])
    assert result.exit_code == 0, result.output
    assert isscompress.load(out).spec.widths == [10, 15]


def test_ddp_with_two_processes_matches_one_process(tmp_path, small_lm) -> None:
    recipe = _recipe(tmp_path, lam=0.01)
    single = tmp_path / "single.safetensors"
    finetune(small_lm, recipe, single)
    ddp = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "isscompress", "finetune", str(small_lm), "-r", str(recipe), "-o", str(ddp)],
        capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = isscompress.load_checkpoint(single).state, isscompress.load_checkpoint(ddp).state
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("stop_in", ["finetune", "recover"])
def test_run_resumes_after_sigint_to_the_uninterrupted_result_and_the_hint_is_a_command_that_works(
        tmp_path, small_lm, stop_in) -> None:
    recipe = _recipe(tmp_path, lam=0.01, extra="  log_every: 5")  # the recover section's, so step 10 is logged
    base = ["run", str(small_lm), "-r", str(recipe), "--repeats", "1", "--threads", "1"]  # one thread: same floats
    assert runner.invoke(app, base + ["-o", str(tmp_path / "straight")]).exit_code == 0
    stage = {"now": ""}

    def interrupt(event):
        if stage["now"] == stop_in and event["event"] == "step" and event["step"] == 10:
            os.kill(os.getpid(), signal.SIGINT)

    folder = tmp_path / "interrupted"
    args = base + ["-o", str(folder)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(isscompress.errors.Interrupted) as caught:
            isscompress.run(small_lm, recipe, folder, speed_repeats=1, on_event=interrupt,
                            on_stage=lambda name: stage.__setitem__("now", name))
    finally:
        torch.set_num_threads(threads)
    assert "Run the same command with --resume" in str(caught.value)
    refused = runner.invoke(app, args)  # the same command without --resume says what to do
    assert refused.exit_code == 1 and "--resume" in refused.stderr
    result = runner.invoke(app, args + ["--resume"])  # the hint, as a command
    assert result.exit_code == 0, result.output
    a = isscompress.load_checkpoint(tmp_path / "straight" / "recovered.safetensors").state
    b = isscompress.load_checkpoint(folder / "recovered.safetensors").state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
