"""inspect / shrink of a user's own model from the command line: --arch FILE.py:FACTORY and --groups FILE.yaml."""

from __future__ import annotations

import json
import statistics

import pytest

import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import isscompress
from anymodel_zoo import GRUTagger, tokens
from isscompress.cli import app

runner = CliRunner()

ARCH = '''
import torch
from anymodel_zoo import GRUTagger, tokens

def make():
    torch.manual_seed(0)
    return GRUTagger(), (tokens(5, 3),)

def broken():
    return "not a model"

def with_batches():
    torch.manual_seed(0)
    model = GRUTagger()
    batches = [(tokens(5, 3, seed=s),) for s in range(8)]  # unlabelled inputs: no tags anywhere
    return model, (tokens(5, 3),), batches

TAGS = tokens(5, 3, vocab=4, seed=9)  # a fixed labelling of the example inputs: the task's metric

def accuracy(model):
    return {"tag accuracy": float((model(tokens(5, 3)).argmax(-1) == TAGS).float().mean())}

def with_metric():
    return (*with_batches(), accuracy)
'''


def checkpoint_with_dead_units(tmp_path):
    (tmp_path / "arch.py").write_text(ARCH)
    torch.manual_seed(0)
    model, inputs = GRUTagger(), (tokens(5, 3),)
    plan = isscompress.discover(model, inputs)
    kept = {gs.name: torch.arange(4) for gs in plan.group_sets}  # 4 of 6 units in every set, 4 of emb's 5 dimensions
    state = isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "tagger.safetensors")
    model.load_state_dict(state)
    return model, inputs


def test_inspect_and_shrink_with_arch(tmp_path):
    masked, inputs = checkpoint_with_dead_units(tmp_path)
    ckpt, arch = tmp_path / "tagger.safetensors", f"{tmp_path / 'arch.py'}:make"
    result = runner.invoke(app, ["inspect", str(ckpt), "--arch", arch, "--json",
                                 "--save-groups", str(tmp_path / "groups.yaml")])
    assert result.exit_code == 0, result.output
    inspected = json.loads(result.stdout)
    assert [(s["name"], s["units"], s["units"] - s["zeros"]) for s in inspected["group_norms"]] == [
        ("gru.l0", 6, 4), ("gru.l0.reverse", 6, 4), ("gru.l1", 6, 4), ("gru.l1.reverse", 6, 4), ("emb", 5, 4)]
    assert inspected["readers"]["gru.l1"] == ["tag"]

    out = tmp_path / "small.safetensors"
    result = runner.invoke(app, ["shrink", str(ckpt), "--arch", arch, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Checked: shrunk and masked models agree" in " ".join(result.stdout.split()) and out.exists()
    small = isscompress.resize_to(GRUTagger(), load_file(out))
    assert small.gru.hidden_size == 4 and small.emb.embedding_dim == 4 and small.gru.input_size == 4
    torch.testing.assert_close(small(*inputs), masked(*inputs), rtol=1e-5, atol=1e-6)

    # without its code, the shrunk file says how to open it
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 1 and "small.safetensors: This checkpoint is of a user's own model" in \
        " ".join(result.stderr.split()) and "--arch FILE.py:FACTORY" in result.stderr
    # the shrunk file opens through the same factory (resized to its tensors)
    result = runner.invoke(app, ["inspect", str(out), "--arch", arch, "--json"])
    assert result.exit_code == 0, result.output
    assert {s["units"] for s in json.loads(result.stdout)["group_norms"]} == {4}

    # --groups alone: the declared surgery, said to be unchecked
    out2 = tmp_path / "small2.safetensors"
    result = runner.invoke(app, ["shrink", str(ckpt), "--groups", str(tmp_path / "groups.yaml"), "-o", str(out2)])
    assert result.exit_code == 0, result.output
    assert "NOT checked" in result.stdout
    assert {k: v.shape for k, v in load_file(out2).items()} == {k: v.shape for k, v in load_file(out).items()}


def test_user_model_errors_are_one_paragraph(tmp_path):
    checkpoint_with_dead_units(tmp_path)
    ckpt = str(tmp_path / "tagger.safetensors")
    cases = [
        (["inspect", ckpt, "--arch", "nofile.py:make"], "does not exist"),
        (["inspect", ckpt, "--arch", f"{tmp_path / 'arch.py'}:missing"], "has no function 'missing'"),
        (["inspect", ckpt, "--arch", f"{tmp_path / 'arch.py'}:broken"], "not (model, example_inputs)"),
        (["inspect", ckpt], "--arch FILE.py:FACTORY"),  # a state dict of no known family says what to do
    ]
    for args, words in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert words in result.stderr, result.stderr
        assert "Traceback" not in result.output
    other = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.ones(2, 2)}, other)
    result = runner.invoke(app, ["shrink", str(other), "--arch", f"{tmp_path / 'arch.py'}:make", "-o",
                                 str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and "does not match the model from --arch" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_label_free_finetune_then_shrink_then_report_from_the_command_line(tmp_path):
    (tmp_path / "arch.py").write_text(ARCH)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in GRUTagger().state_dict().items()}, tmp_path / "t.safetensors")
    arch = f"{tmp_path / 'arch.py'}:with_batches"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 6, lr: 0.01, optimizer: adam, seed: 3}\n"
                      "iss: {lambda: 10.0, method: proximal, target_widths: {gru.l0: 3, gru.l0.reverse: 3,"
                      " gru.l1: 3, gru.l1.reverse: 3}}\n"
                      "distill: {alpha: 1.0, temperature: 2.0}\n")
    tuned = tmp_path / "tuned.safetensors"
    result = runner.invoke(app, ["finetune", str(tmp_path / "t.safetensors"), "--arch", arch, "-r", str(recipe),
                                 "-o", str(tuned)])
    assert result.exit_code == 0, result.output
    assert "label-free finetune epoch 6: train loss" in result.stderr
    small = tmp_path / "small.safetensors"
    result = runner.invoke(app, ["shrink", str(tuned), "--arch", arch, "-o", str(small)])
    assert result.exit_code == 0, result.output
    assert isscompress.resize_to(GRUTagger(), load_file(small)).gru.hidden_size == 3
    result = runner.invoke(app, ["report", str(tmp_path / "t.safetensors"), str(small), "--arch", arch, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["widths"]["gru.l0"] == [6, 3]
    assert report["shrunk"]["total_parameters"] < report["original"]["total_parameters"]
    # the output gap, computed here: KL(original || shrunk) over the tags, on the factory's example inputs
    original = GRUTagger()
    original.load_state_dict(load_file(tmp_path / "t.safetensors"))
    shrunk_model = isscompress.resize_to(GRUTagger(), load_file(small))
    with torch.no_grad():
        teacher, student = original.eval()(tokens(5, 3)), shrunk_model.eval()(tokens(5, 3))
        gap = torch.nn.functional.kl_div(student.reshape(-1, 4), teacher.reshape(-1, 4), log_target=True,
                                         reduction="batchmean")
    assert report["output_gap"]["divergence"] == pytest.approx(float(gap), rel=1e-4, abs=1e-7)
    agreement = float((student.argmax(-1) == teacher.argmax(-1)).float().mean())
    assert report["output_gap"]["top1_agreement"] == pytest.approx(agreement)
    assert bool(report["warnings"]) == (agreement < 0.99 or report["output_gap"]["divergence"] > 0.05)
    (speed,) = report["speed"]  # calls of forward on the example inputs, interleaved
    assert speed["speedup_median"] == pytest.approx(statistics.median(
        b / a for b, a in zip(speed["before_seconds"], speed["after_seconds"])))

    # a recipe that asks for labels, or a factory without batches, says what to do
    recipe.write_text("iss: {lambda: 1.0}\ndistill: {alpha: 0.5}\n")
    result = runner.invoke(app, ["finetune", str(tuned), "--arch", arch, "-r", str(recipe), "-o",
                                 str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and "label-free" in result.stderr
    recipe.write_text("iss: {lambda: 1.0}\n")
    result = runner.invoke(app, ["finetune", str(tuned), "--arch", f"{tmp_path / 'arch.py'}:make", "-r", str(recipe),
                                 "-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1 and "unlabelled inputs" in result.stderr
    assert not (tmp_path / "x.safetensors").exists()


RANDOM_ARCH = '''
import torch
from anymodel_zoo import GRUTagger, tokens

class Coin(GRUTagger):
    def forward(self, tokens):
        out = super().forward(tokens)
        return out * 2 if torch.rand(()) < 0.5 else out  # a random branch: each run may take either

def make():
    torch.manual_seed(0)
    return Coin(), (tokens(5, 3),)

def wrong_on_second_batch():
    torch.manual_seed(0)
    model = ReadsSize()
    return model, (tokens(5, 3),), [(tokens(7, 2, seed=1),)]

class ReadsSize(GRUTagger):
    def forward(self, tokens):
        out = super().forward(tokens)
        return out if tokens.shape[0] == 5 else out * self.gru.hidden_size / 6  # a path only longer inputs take
'''


def test_a_random_forward_is_refused_and_a_second_batch_is_checked(tmp_path):
    checkpoint_with_dead_units(tmp_path)
    (tmp_path / "coin.py").write_text(RANDOM_ARCH)
    out = tmp_path / "small.safetensors"
    for factory, words in (("make", "different outputs on runs of the same inputs"),
                           ("wrong_on_second_batch", "differ from the masked model's")):
        result = runner.invoke(app, ["shrink", str(tmp_path / "tagger.safetensors"), "--arch",
                                     f"{tmp_path / 'coin.py'}:{factory}", "-o", str(out)])
        assert result.exit_code == 1, result.output
        assert words in " ".join(result.stderr.split()), result.stderr
        assert not out.exists()


def test_save_groups_never_overwrites_the_checkpoint_or_an_existing_file(tmp_path):
    checkpoint_with_dead_units(tmp_path)
    ckpt, arch = tmp_path / "tagger.safetensors", f"{tmp_path / 'arch.py'}:make"
    before = ckpt.read_bytes()
    result = runner.invoke(app, ["inspect", str(ckpt), "--arch", arch, "--save-groups", str(ckpt)])
    assert result.exit_code == 1 and "is the input file" in result.stderr
    assert ckpt.read_bytes() == before
    groups = tmp_path / "groups.yaml"
    groups.write_text("mine")
    result = runner.invoke(app, ["inspect", str(ckpt), "--arch", arch, "--save-groups", str(groups)])
    assert result.exit_code == 1 and "--force" in result.stderr and groups.read_text() == "mine"
    result = runner.invoke(app, ["inspect", str(ckpt), "--arch", arch, "--save-groups", str(groups), "--force"])
    assert result.exit_code == 0 and groups.read_text().startswith("format: isscompress-groups/1")


GOOD_SET = "  - name: gru.l0\n    size: 6\n    members:\n      - {key: gru.weight_ih_l0, axis: 0, starts: [0, 6, 12]}\n"
BAD_GROUPS = [
    ("aliases", "format: isscompress-groups/1\na: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nsets: *b\n",
     ["line 2", "anchors and aliases"]),
    ("size 0", f"format: isscompress-groups/1\nsets:\n{GOOD_SET.replace('size: 6', 'size: 0')}",
     ["line 4", "'sets.0.size'", "greater than 0"]),
    ("misspelt key", f"format: isscompress-groups/1\nsets:\n{GOOD_SET.replace('size:', 'sise:')}",
     ["unknown key 'sets.0.sise'", "Did you mean 'size'?"]),
    ("negative start", f"format: isscompress-groups/1\nsets:\n{GOOD_SET.replace('[0, 6, 12]', '[-1]')}",
     ["'sets.0.members.0.starts.0'", "greater than or equal to 0"]),
    ("a number as a key", f"format: isscompress-groups/1\nsets:\n{GOOD_SET.replace('gru.weight_ih_l0', '12')}",
     ["'sets.0.members.0.key'", "valid string"]),
    ("a set twice", f"format: isscompress-groups/1\nsets:\n{GOOD_SET}{GOOD_SET}", ["set 'gru.l0' is defined twice"]),
    ("positions claimed twice", f"format: isscompress-groups/1\nsets:\n{GOOD_SET}"
     f"{GOOD_SET.replace('gru.l0', 'other').replace('[0, 6, 12]', '[3]')}", ["positions 3..5 of 'gru.weight_ih_l0'",
                                                                             "belong to set 'gru.l0' and again"]),
    ("starts overlapping", f"format: isscompress-groups/1\nsets:\n{GOOD_SET.replace('[0, 6, 12]', '[0, 2]')}",
     ["positions 2..5", "'gru.l0' and again to set 'gru.l0'"]),
    ("past the tensor", f"format: isscompress-groups/1\nsets:\n{GOOD_SET.replace('[0, 6, 12]', '[0, 6, 90]')}",
     ["reaches past `gru.weight_ih_l0`"]),
]


@pytest.mark.parametrize("name, text, fragments", BAD_GROUPS, ids=[case[0] for case in BAD_GROUPS])
def test_bad_groups_files_are_one_paragraph_with_the_line(tmp_path, name, text, fragments, clean_failure):
    checkpoint_with_dead_units(tmp_path)
    groups = tmp_path / "groups.yaml"
    groups.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    result = runner.invoke(app, ["shrink", str(tmp_path / "tagger.safetensors"), "--groups", str(groups), "-o",
                                 str(out / "small.safetensors")])
    clean_failure(result, *fragments, folder=out, empty=True)


def test_a_shrink_through_arch_records_lineage_source_hash_and_kept_units(tmp_path):
    import hashlib

    from safetensors import safe_open

    checkpoint_with_dead_units(tmp_path)
    ckpt, out = tmp_path / "tagger.safetensors", tmp_path / "small.safetensors"
    result = runner.invoke(app, ["shrink", str(ckpt), "--arch", f"{tmp_path / 'arch.py'}:make", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), "pt") as handle:
        record = json.loads(handle.metadata()["isscompress"])
    assert record["lineage"][-1]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert record["lineage"][-1]["from"] == "tagger.safetensors" and record["stage"] == "shrink"
    assert record["kept"] == {name: [0, 1, 2, 3] for name in ("gru.l0", "gru.l0.reverse", "gru.l1", "gru.l1.reverse",
                                                              "emb")}  # the embedding's dimensions are a width too


def _user_setup(tmp_path, recipe_text: str):
    (tmp_path / "arch.py").write_text(ARCH)
    torch.manual_seed(0)
    source = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in GRUTagger().state_dict().items()}, source)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    return source, f"{tmp_path / 'arch.py'}:with_batches", recipe


LABEL_FREE = ("finetune: {epochs: 3, lr: 0.01, optimizer: adam, seed: 3, log_every: 1}\n"
              "iss: {lambda: 3.0, method: proximal, warmup_steps: 4}\ndistill: {alpha: 1.0}\n")


def straight_and_resumed(source, recipe, arch: str, folder, step: int) -> tuple[dict, dict]:
    """The tensors of a straight label-free fine-tuning and of one interrupted by SIGINT at ``step`` and resumed."""
    import os
    import signal

    from isscompress.errors import Interrupted
    straight, interrupted = folder / "straight.safetensors", folder / "interrupted.safetensors"
    isscompress.finetune(source, recipe, straight, arch=arch)

    def interrupt(event):
        if event["event"] == "step" and event["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        isscompress.finetune(source, recipe, interrupted, arch=arch, on_event=interrupt)
    assert load_file(interrupted)  # what was saved at the signal is a complete checkpoint
    isscompress.finetune(source, recipe, interrupted, arch=arch, resume=True)
    return load_file(straight), load_file(interrupted)


def test_label_free_finetune_resumes_after_sigint_to_the_uninterrupted_weights(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE)
    a, b = straight_and_resumed(source, recipe, arch, tmp_path, step=10)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "interrupted.safetensors.log.jsonl").read_text().count('"event": "epoch"') == 3


def test_every_recipe_field_applies_to_a_user_model_or_is_refused(tmp_path, clean_failure):
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE)
    # applied: per-set multipliers (the recipe path's hook), seen in the alive counts of the last epoch
    recipe.write_text(LABEL_FREE.replace("warmup_steps: 4}", "layer_multipliers: {gru.l1: 30, gru.l1.reverse: 30}}"))
    epochs = []
    isscompress.finetune(source, recipe, None, arch=arch, on_event=lambda e: e["event"] == "epoch" and epochs.append(e))
    alive = epochs[-1]["alive"]
    assert alive["gru.l1"] < alive["gru.l0"] and alive["gru.l1.reverse"] < alive["gru.l0.reverse"], alive
    # lr decay applies (no validation: from decay_start on)
    recipe.write_text(LABEL_FREE.replace("seed: 3,", "seed: 3, lr_decay: 0.5,"))
    epochs.clear()
    isscompress.finetune(source, recipe, None, arch=arch, on_event=lambda e: e["event"] == "epoch" and epochs.append(e))
    assert [e["lr"] for e in epochs] == [0.01, 0.005, 0.0025]
    # refused, by name, with the reason
    out = tmp_path / "out"
    out.mkdir()
    for extra, words in (("finetune: {dropout: 0.3}", "finetune.dropout does not apply to a user model"),
                         (f"data: {{train: {recipe}}}", "data.train does not apply"),
                         ("finetune: {decay_on_plateau: true}", "finetune.decay_on_plateau does not apply")):
        recipe.write_text(extra + "\n" + ("iss: {lambda: 1.0}\n" if "iss:" not in extra else ""))
        result = runner.invoke(app, ["finetune", str(source), "--arch", arch, "-r", str(recipe), "-o",
                                     str(out / "x.safetensors")])
        clean_failure(result, words, folder=out, empty=True)


def test_a_shrunk_user_model_recovers_towards_the_original_named_as_teacher(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE + "recover: {epochs: 1, lr: 0.001, optimizer: adam}\n")
    small = tmp_path / "small.safetensors"  # units that were not zero removed: a different function
    norms = isscompress.inspect(source, arch=arch).norms
    done = isscompress.shrink(source, small, max(n.quantiles["q50"] for n in norms if n.name.startswith("gru")),
                              arch=arch, widths="recurrent")
    assert done.changes_the_function and sum(done.widths_after.values()) < sum(done.widths_before.values())
    first_loss = {}
    for teacher in ("source", str(source)):
        recipe.write_text(LABEL_FREE.replace("distill: {alpha: 1.0}", f"distill: {{alpha: 1.0, teacher: '{teacher}'}}")
                          + "recover: {epochs: 1, lr: 0.001, optimizer: adam, log_every: 1}\n")
        events = []
        isscompress.finetune(small, recipe, None, arch=arch, stage="recover",
                             on_event=lambda e: e["event"] == "step" and events.append(e))
        first_loss[teacher] = events[0]["loss"]
    assert first_loss["source"] == pytest.approx(0.0, abs=1e-9)  # the shrunk model teaching itself
    assert first_loss[str(source)] > 1e-4  # the dense original: the gap the recovery closes


def test_one_shot_removes_the_weakest_units_at_the_start_and_keeps_them_removed(tmp_path, clean_failure):
    targets = {name: 3 for name in ("gru.l0", "gru.l0.reverse", "gru.l1", "gru.l1.reverse")}
    source, arch, recipe = _user_setup(tmp_path, "finetune: {epochs: 2, lr: 0.01, optimizer: adam, seed: 3}\n"
                                       f"iss: {{method: one-shot, importance: norm, target_widths: {targets}}}\n"
                                       "distill: {alpha: 1.0}\n")
    before = isscompress.inspect(source, arch=arch)
    done = isscompress.finetune(source, recipe, tmp_path / "tuned.safetensors", arch=arch)
    from isscompress.io.loading import as_checkpoint

    opened = as_checkpoint(tmp_path / "tuned.safetensors", arch=arch)
    after = isscompress.all_unit_norms(opened.state, opened.group_sets)
    original = isscompress.all_unit_norms(as_checkpoint(source, arch=arch).state,
                                          opened.group_sets)
    for name in targets:  # each set's three weakest by norm at the start are exactly zero; the rest trained on
        norms = after[name]
        weakest = set(original[name].argsort()[:3].tolist())
        assert {i for i in range(6) if norms[i] == 0} == weakest, name
    assert done.widths == {**targets, "emb": 5} and len(before.norms) == 5  # iss.widths: recurrent left emb whole
    # a one-shot recipe without a goal is refused by its line
    recipe.write_text("finetune: {epochs: 1}\niss: {method: one-shot}\n")
    result = runner.invoke(app, ["finetune", str(source), "--arch", arch, "-r", str(recipe), "-o",
                                 str(tmp_path / "x.safetensors")])
    clean_failure(result, "method one-shot removes units down to a goal")


TASK_LOSS = '''

def task_loss(outputs, batch):  # the task's own labels, derived from the batch (here: token id mod 4)
    return torch.nn.functional.cross_entropy(outputs.reshape(-1, 4), (batch[0] % 4).reshape(-1))
'''


def test_a_factory_task_loss_mixes_the_labels_into_fine_tuning_by_distill_alpha(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, "finetune: {epochs: 1, lr: 0.01, optimizer: adam, seed: 3, "
                                       "log_every: 1}\niss: {lambda: 1.0, method: proximal}\ndistill: {alpha: 0.25}\n")
    (tmp_path / "arch.py").write_text(ARCH + TASK_LOSS)
    steps = []
    isscompress.finetune(source, recipe, None, arch=arch, on_event=lambda e: e["event"] == "step" and steps.append(e))
    # computed here: at the first step the student is its teacher (KL 0), so the loss is 0.75 x the task's loss
    model = GRUTagger()
    model.load_state_dict(load_file(source))
    with torch.no_grad():
        first = tokens(5, 3, seed=0)
        expected = torch.nn.functional.cross_entropy(model.eval()(first).reshape(-1, 4), (first % 4).reshape(-1))
    assert steps[0]["loss"] == pytest.approx(0.75 * float(expected), rel=1e-5)


def test_report_shows_the_task_metric_the_factory_measures(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE.replace("warmup_steps: 4}", "target: {macs: 0.5}}"))
    arch = arch.replace(":with_batches", ":with_metric")
    isscompress.finetune(source, recipe, tmp_path / "tuned.safetensors", arch=arch)
    isscompress.shrink(tmp_path / "tuned.safetensors", tmp_path / "small.safetensors", 0.0, arch=arch)
    result = runner.invoke(app, ["report", str(source), str(tmp_path / "small.safetensors"), "--arch", arch, "--json",
                                 "--no-speed"])
    assert result.exit_code == 0, result.output
    # measured here on both models, as the factory's evaluate would
    tags = tokens(5, 3, vocab=4, seed=9)
    original = GRUTagger()
    original.load_state_dict(load_file(source))
    shrunk = isscompress.resize_to(GRUTagger(), load_file(tmp_path / "small.safetensors"))
    with torch.no_grad():
        expected = [float((m.eval()(tokens(5, 3)).argmax(-1) == tags).float().mean()) for m in (original, shrunk)]
    assert json.loads(result.stdout)["metrics"] == {"tag accuracy": pytest.approx(expected)}
    shown = runner.invoke(app, ["report", str(source), str(tmp_path / "small.safetensors"), "--arch", arch,
                                "--no-speed"])
    assert "tag accuracy" in shown.stdout
    # the output gap on the example inputs warns only when no task metric was measured (with one, the metric speaks)
    from isscompress.measure.output_gap import OutputGap
    from isscompress.verbs.report import Report

    different = OutputGap(divergence=0.9, agreement=0.4)
    assert Report(None, output_gap=different).warnings
    assert not Report(None, output_gap=different, metrics={"tag accuracy": (0.5, 0.5)}).warnings
    refused = runner.invoke(app, ["report", str(source), str(tmp_path / "small.safetensors"), "--arch", arch, "--int8"])
    assert refused.exit_code == 1 and "report --int8 quantises a recurrent stack" in " ".join(refused.stderr.split())


def test_a_mac_budget_is_met_by_a_user_model_as_by_a_language_model(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE.replace("warmup_steps: 4}", "target: {macs: 0.5}}")
                                       .replace("epochs: 3", "epochs: 12"))
    done = isscompress.finetune(source, recipe, tmp_path / "tuned.safetensors", arch=arch)
    small = isscompress.shrink(done.output, tmp_path / "small.safetensors", 0.0, arch=arch)
    # counted here: one multiply-add per recurrent matrix weight of the shrunk GRU, and per weight of the tag head,
    # which runs at every token, against the original's
    shrunk = isscompress.resize_to(GRUTagger(), load_file(tmp_path / "small.safetensors"))
    macs = lambda model: sum(p.numel() for name, p in model.gru.named_parameters() if p.dim() == 2) + \
        model.tag.weight.numel()  # noqa: E731
    assert macs(shrunk) <= 0.5 * macs(GRUTagger())
    assert small.after.total_macs == macs(shrunk) and small.before.total_macs == macs(GRUTagger())
    assert done.widths == small.widths_after


def test_a_lambda_too_weak_for_the_run_is_warned_before_training_with_its_scale(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE.replace("lambda: 3.0", "lambda: 0.0001"))
    result = runner.invoke(app, ["finetune", str(source), "--arch", arch, "-r", str(recipe), "-o",
                                 str(tmp_path / "tuned.safetensors")])
    assert result.exit_code == 0, result.output
    shown = " ".join(result.stderr.split())
    assert "warning: iss.lambda 0.0001 can shrink a group's norm by at most" in shown and "Try lambda around" in shown
    model, inputs = GRUTagger(), (tokens(5, 3),)
    reg = isscompress.GroupLasso(model, isscompress.discover(model, inputs), lam=1.0)
    median = float(torch.cat(list(reg.norms().values())).median())
    assert reg.suggest_lambda(lr=0.01, steps=24) == pytest.approx(3 * median / (0.01 * 24))


def test_label_free_recovery_stage_runs_the_recover_schedule_without_iss(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE + "recover: {epochs: 2, lr: 0.001, optimizer: adam}\n")
    epochs = []
    done = isscompress.finetune(source, recipe, tmp_path / "r.safetensors", arch=arch, stage="recover",
                               on_event=lambda e: e["event"] == "epoch" and epochs.append(e))
    assert [e["lr"] for e in epochs] == [0.001, 0.001]  # the recover schedule, not finetune's 3 epochs at 0.01
    assert all("alive" not in e for e in epochs)  # no group Lasso hook in a recovery
    assert done.widths == {**{name: 6 for name in ("gru.l0", "gru.l0.reverse", "gru.l1", "gru.l1.reverse")}, "emb": 5}


MAIN_PY_ARCH = '''
import torch
from anymodel_zoo import tokens
import model as wlm  # pytorch/examples word_language_model's RNNModel (the tests' stand-in)

def make():
    torch.manual_seed(0)
    model = wlm.RNNModel("LSTM", 20, 6, 8, 2)
    return model, (tokens(5, 3), (torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)))  # main.py: model(data, init_hidden)
'''


def test_a_model_called_as_pytorch_examples_main_py_calls_it_shrinks_and_reports_from_the_command_line(tmp_path):
    import model as wlm

    (tmp_path / "mainpy.py").write_text(MAIN_PY_ARCH)
    arch = f"{tmp_path / 'mainpy.py'}:make"
    torch.manual_seed(0)
    model = wlm.RNNModel("LSTM", 20, 6, 8, 2)
    with torch.no_grad():  # units 1, 4 and 6 of both layers zeroed, as ISS fine-tuning leaves them
        for layer in (0, 1):
            for unit in (1, 4, 6):
                for name in (f"weight_ih_l{layer}", f"weight_hh_l{layer}", f"bias_ih_l{layer}", f"bias_hh_l{layer}"):
                    getattr(model.rnn, name)[[unit, 8 + unit, 16 + unit, 24 + unit]] = 0
                getattr(model.rnn, f"weight_hh_l{layer}")[:, unit] = 0
                (model.rnn.weight_ih_l1 if layer == 0 else model.decoder.weight)[:, unit] = 0
    source, small = tmp_path / "model.safetensors", tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, source)
    result = runner.invoke(app, ["shrink", str(source), "--arch", arch, "-o", str(small)])
    assert result.exit_code == 0, result.output
    assert load_file(small)["rnn.weight_hh_l0"].shape == (20, 5)
    report = runner.invoke(app, ["report", str(source), str(small), "--arch", arch, "--json", "--repeats", "1"])
    assert report.exit_code == 0, report.output
    done = json.loads(report.stdout)
    assert done["widths"]["rnn.l0"] == [8, 5] and done["output_gap"]["divergence"] < 1e-9
    assert done["output_gap"]["top1_agreement"] == 1.0
    inspected = runner.invoke(app, ["inspect", str(small), "--arch", arch, "--json"])
    assert inspected.exit_code == 0, inspected.output
    assert {n["name"]: n["units"] for n in json.loads(inspected.stdout)["group_norms"]}["rnn.l0"] == 5


def test_a_tied_model_shrinks_and_reports_from_the_command_line(tmp_path):
    import model as wlm

    (tmp_path / "tied.py").write_text(MAIN_PY_ARCH.replace('wlm.RNNModel("LSTM", 20, 6, 8, 2)',
                                                           'wlm.RNNModel("LSTM", 20, 8, 8, 2, tie_weights=True)'))
    arch = f"{tmp_path / 'tied.py'}:make"
    torch.manual_seed(0)
    model = wlm.RNNModel("LSTM", 20, 8, 8, 2, tie_weights=True)
    plan = isscompress.discover(model, (tokens(5, 3), (torch.zeros(2, 3, 8), torch.zeros(2, 3, 8))))
    kept = {gs.name: torch.tensor([0, 2, 3, 5, 7]) for gs in plan.group_sets}
    state = isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept)
    state["decoder.weight"] = state["encoder.weight"]  # one tensor under both names, as the model holds it
    source, small = tmp_path / "tied.safetensors", tmp_path / "small.safetensors"
    save_file({k: v.contiguous().clone() for k, v in state.items()}, source)
    result = runner.invoke(app, ["shrink", str(source), "--arch", arch, "-o", str(small)])
    assert result.exit_code == 0, result.output
    shrunk = load_file(small)  # one tensor under its first name, as safetensors' save_model writes shared ones
    assert shrunk["encoder.weight"].shape == (20, 5) and "decoder.weight" not in shrunk
    reloaded = isscompress.resize_to(wlm.RNNModel("LSTM", 20, 8, 8, 2, tie_weights=True), shrunk)
    assert reloaded.decoder.weight is reloaded.encoder.weight and reloaded.encoder.weight.shape == (20, 5)
    report = runner.invoke(app, ["report", str(source), str(small), "--arch", arch, "--json", "--repeats", "1"])
    assert report.exit_code == 0, report.output
    done = json.loads(report.stdout)
    assert done["widths"]["rnn.l1"] == [8, 5] and done["output_gap"]["top1_agreement"] == 1.0
    assert done["output_gap"]["divergence"] < 1e-9  # the tied decoder shrank with its embedding, nothing else moved
    (speed,) = done["speed"]  # forward calls on the example inputs, named as such (not "tokens")
    assert speed["unit"] == "calls" and speed["calls"] == 1 and speed["before_calls_per_s"] > 0
    assert "tokens" not in speed and "before_tokens_per_s" not in speed


def test_a_model_reading_self_hidden_size_shrinks_and_reopens_from_the_command_line(tmp_path):
    from test_anymodel import StoredWidth

    (tmp_path / "stored.py").write_text("import torch\nfrom test_anymodel import StoredWidth\n\n"
                                         "def make():\n    torch.manual_seed(0)\n"
                                         "    return StoredWidth(), (torch.randn(3, 6, 5),)\n")
    arch = f"{tmp_path / 'stored.py'}:make"
    torch.manual_seed(0)
    model = StoredWidth()
    plan = isscompress.discover(model, (torch.randn(3, 6, 5),))
    state = isscompress.mask_state_dict(model.state_dict(), plan.group_sets,
                                        {gs.name: torch.tensor([1, 3, 4, 6]) for gs in plan.group_sets})
    source, small = tmp_path / "m.safetensors", tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, source)
    result = runner.invoke(app, ["shrink", str(source), "--arch", arch, "-o", str(small)])
    assert result.exit_code == 0, result.output
    report = runner.invoke(app, ["report", str(source), str(small), "--arch", arch, "--json", "--repeats", "1"])
    assert report.exit_code == 0, report.output
    done = json.loads(report.stdout)
    assert done["widths"]["lstm.l0"] == [8, 4] and done["output_gap"]["divergence"] < 1e-9


def test_save_groups_is_for_a_user_models_names_not_a_language_models_canonical_ones(tmp_path, clean_failure):
    from conftest import make_rnn_model

    source = tmp_path / "lm.pt"
    torch.save(make_rnn_model().state_dict(), source)
    result = runner.invoke(app, ["inspect", str(source), "--save-groups", str(tmp_path / "g.yaml")])
    clean_failure(result, "--save-groups writes a user model's groups in its own tensor names")
    assert not (tmp_path / "g.yaml").exists()


def test_shrink_narrows_every_width_or_only_the_recurrent_layers(tmp_path, clean_failure):
    """The embedding's zero dimension goes with --widths all (the default) and stays with --widths recurrent; a
    choice that is neither is refused by name, before anything is written."""
    masked, inputs = checkpoint_with_dead_units(tmp_path)
    ckpt, arch = tmp_path / "tagger.safetensors", f"{tmp_path / 'arch.py'}:make"
    for widths, dimensions in (("all", 4), ("recurrent", 5)):
        out = tmp_path / f"small-{widths}.safetensors"
        result = runner.invoke(app, ["shrink", str(ckpt), "--arch", arch, "--widths", widths, "-o", str(out)])
        assert result.exit_code == 0, result.output
        small = isscompress.resize_to(GRUTagger(), load_file(out))
        assert small.gru.hidden_size == 4 and small.emb.embedding_dim == dimensions
        torch.testing.assert_close(small(*inputs), masked(*inputs), rtol=1e-5, atol=1e-6)
    (tmp_path / "out").mkdir()
    result = runner.invoke(app, ["shrink", str(ckpt), "--arch", arch, "--widths", "embedding", "-o",
                                 str(tmp_path / "out" / "x.safetensors")])
    clean_failure(result, "Unknown widths choice 'embedding'", folder=tmp_path / "out", empty=True)


def test_a_factorys_metrics_say_which_way_is_better_and_report_warns_beyond_their_noise(tmp_path):
    from isscompress.verbs.report import Report

    lower = {"PER": {"better": "lower", "noise": 0.01}}
    assert Report(None, metrics={"PER": (0.10, 0.13)}, metric_rules=lower).warnings  # 3 points worse, noise 1
    assert not Report(None, metrics={"PER": (0.10, 0.105)}, metric_rules=lower).warnings  # within noise
    assert not Report(None, metrics={"PER": (0.10, 0.05)}, metric_rules=lower).warnings  # better
    higher = {"accuracy": {"better": "higher"}}  # no noise given: 1% of the original is the bar, as for perplexity
    assert "accuracy got worse, 0.9 -> 0.85 (higher is better)" in Report(
        None, metrics={"accuracy": (0.9, 0.85)}, metric_rules=higher).warnings[0]
    assert not Report(None, metrics={"accuracy": (0.9, 0.95)}, metric_rules=higher).warnings
    # from an --arch file's METRICS, through report --json; a malformed declaration is refused by name
    source, arch, recipe = _user_setup(tmp_path, LABEL_FREE)
    arch_file = tmp_path / "arch.py"
    arch_file.write_text(arch_file.read_text() + "\nMETRICS = {'tag accuracy': {'better': 'higher', 'noise': 0.0}}\n")
    arch = arch.replace(":with_batches", ":with_metric")
    result = runner.invoke(app, ["report", str(source), str(source), "--arch", arch, "--json", "--no-speed"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metric_rules"] == {"tag accuracy": {"better": "higher", "noise": 0.0}}
    arch_file.write_text(arch_file.read_text().replace("'better': 'higher'", "'better': 'up'"))
    refused = runner.invoke(app, ["report", str(source), "--arch", arch, "--no-speed"])
    assert refused.exit_code == 1 and "METRICS in" in refused.stderr and "which way is better" in refused.stderr


def test_run_takes_arch_the_whole_recipe_for_a_user_model_and_resumes(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, "finetune: {epochs: 1, lr: 0.003}\niss: {method: gradual, "
                                       "removal_rounds: 2, target: {macs: 0.5}}\nrecover: {epochs: 1, lr: 0.001}\n"
                                       "distill: {alpha: 1.0}\n")
    folder = tmp_path / "run"
    args = ["run", str(source), "-r", str(recipe), "-o", str(folder), "--arch", arch, "--repeats", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "report.json").read_text())
    assert report["mac_ratio"] >= 2.0 and {"finetuned.safetensors", "shrunk.safetensors", "recovered.safetensors"} <= {
        p.name for p in folder.iterdir()}
    small = isscompress.resize_to(GRUTagger(), load_file(folder / "recovered.safetensors"))
    assert small.gru.hidden_size < 6
    again = runner.invoke(app, args + ["--resume"])  # the finished stages are read back through the factory
    assert again.exit_code == 0, again.output
    assert json.loads((folder / "report.json").read_text())["mac_ratio"] == report["mac_ratio"]


def test_eval_takes_arch_and_measures_the_factorys_own_metrics(tmp_path):
    source, arch, _ = _user_setup(tmp_path, LABEL_FREE)
    arch = arch.replace(":with_batches", ":with_metric")
    result = runner.invoke(app, ["eval", str(source), "--arch", arch, "--json"])
    assert result.exit_code == 0, result.output
    model = GRUTagger()
    model.load_state_dict(load_file(source))
    with torch.no_grad():
        expected = float((model.eval()(tokens(5, 3)).argmax(-1) == tokens(5, 3, vocab=4, seed=9)).float().mean())
    assert json.loads(result.stdout)["metrics"] == {"tag accuracy": pytest.approx(expected)}
    without = runner.invoke(app, ["eval", str(source), "--arch", arch.replace(":with_metric", ":with_batches")])
    assert without.exit_code == 1 and "gives no evaluate function" in " ".join(without.stderr.split())


def test_fine_tuning_shows_the_factorys_metrics_after_removal_and_at_each_epoch_when_it_declares_them(tmp_path):
    source, arch, recipe = _user_setup(tmp_path, "finetune: {epochs: 2, lr: 0.003}\niss: {method: one-shot, target: "
                                       "{macs: 0.5}}\n")
    arch = arch.replace(":with_batches", ":with_metric")
    plain = isscompress.finetune(source, recipe, arch=arch)
    assert not [e for e in plain.events if "metrics" in e]  # without METRICS the stage runs no evaluation
    (tmp_path / "arch.py").write_text((tmp_path / "arch.py").read_text()
                                      + "\nMETRICS = {'tag accuracy': {'better': 'higher'}}\n")
    result = isscompress.finetune(source, recipe, arch=arch)
    start = [e for e in result.events if e["event"] == "metrics"]
    epochs = [e for e in result.events if e["event"] == "epoch"]
    assert len(start) == 1 and start[0]["step"] == 0 and set(start[0]["metrics"]) == {"tag accuracy"}
    assert len(epochs) == 2 and all(set(e["metrics"]) == {"tag accuracy"} for e in epochs)
    from isscompress.verbs.evaluate import evaluate_task

    final = evaluate_task(result.checkpoint, arch)
    assert epochs[-1]["metrics"]["tag accuracy"] == pytest.approx(final["tag accuracy"])
    shown = runner.invoke(app, ["finetune", str(source), "-r", str(recipe), "--arch", arch, "-o",
                                str(tmp_path / "tuned.safetensors")])
    assert shown.exit_code == 0, shown.output
    assert "start (after any one-shot removal): tag accuracy" in " ".join(shown.stderr.split())
