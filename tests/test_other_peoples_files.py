"""Trust, round 4: files isscompress was not given are never touched, read or trusted — resume, side files,
split caches, the teacher path — and a state or run file someone edited is refused by name (exit 1)."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from test_bad_input_matrix import world  # noqa: F401  (the fixture: a model, a recipe, text)
from typer.testing import CliRunner

from isscompress.cli import app
from isscompress.recipe import load_recipe

runner = CliRunner()


def _finetune(world, out: Path, *extra: str):
    return runner.invoke(app, ["finetune", str(world["model"]), "-r", str(world["recipe"]), "-o", str(out), *extra])


def _clean_error(result, pattern: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert pattern in " ".join(result.stderr.split()), result.stderr


def test_resume_never_overwrites_its_input(world) -> None:
    before = world["model"].read_bytes()
    result = _finetune(world, world["model"], "--resume")
    _clean_error(result, "is the input file")
    assert world["model"].read_bytes() == before


def test_resume_never_appends_through_a_link_at_the_log(world, tmp_path) -> None:
    out = world["out"] / "tuned.safetensors"
    assert _finetune(world, out).exit_code == 0
    victim = tmp_path / "someone-elses.txt"
    victim.write_text("theirs\n")
    log = out.with_name(out.name + ".log.jsonl")
    log.unlink()
    log.symlink_to(victim)
    result = _finetune(world, out, "--resume")
    _clean_error(result, "is a symbolic link")
    assert victim.read_text() == "theirs\n"


def test_a_failed_run_removes_the_log_it_started_so_a_plain_retry_runs(world, monkeypatch) -> None:
    out = world["out"] / "tuned.safetensors"
    world["recipe"].write_text(world["recipe"].read_text().replace("lambda: 0.001", "lambda: 0.001\n  "
                                                                   "target_widths: {layer9: 2}"))
    refused = _finetune(world, out)  # refused before anything is written
    assert refused.exit_code == 1 and not list(world["out"].iterdir())
    world["recipe"].write_text(world["recipe"].read_text().replace("  target_widths: {layer9: 2}", ""))
    from isscompress.training import loop

    def fail(*args, **kwargs):
        raise RuntimeError("an accelerator fault")

    monkeypatch.setattr(loop.Loop, "end_epoch", fail)  # fails after steps were logged, before any save
    with pytest.raises(RuntimeError):
        import isscompress
        isscompress.finetune(world["model"], world["recipe"], out)
    assert not out.with_name(out.name + ".log.jsonl").exists()
    monkeypatch.undo()
    assert _finetune(world, out).exit_code == 0  # a plain retry is not refused


def _saved_state(world) -> tuple[Path, dict]:
    out = world["out"] / "tuned.safetensors"
    assert _finetune(world, out).exit_code == 0
    state_file = out.with_name(out.name + ".train-state.pt")
    return out, torch.load(state_file, weights_only=True)


@pytest.mark.parametrize("spoil, message", [
    (lambda s: [1, 2, 3], "not the dict of a training state"),
    (lambda s: {k: v for k, v in s.items() if k != "optimizer"}, "missing optimizer"),
    (lambda s: {**s, "extra": 1}, "unknown extra"),
    (lambda s: {**s, "step": "many"}, "'step' is str"),
    (lambda s: {**s, "lr": -0.5}, "'lr' is -0.5"),
    (lambda s: {**s, "epoch": float("nan")}, "'epoch' is float"),
    (lambda s: {**s, "hidden": "text"}, "'hidden' is not a list"),
    (lambda s: {**s, "rng": torch.zeros(3)}, "'rng' is not"),
    (lambda s: {**s, "model": {k: v[:1] for k, v in s["model"].items()}}, "its weights are not those of this model"),
    (lambda s: {**s, "optimizer": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                                                  "exp_avg_sq": torch.zeros(3)}}, "param_groups": [{"params": [0]}]}},
     "does not fit this model"),
])
def test_a_tampered_training_state_is_refused_by_name(world, spoil, message) -> None:
    out, saved = _saved_state(world)
    torch.save(spoil(saved), out.with_name(out.name + ".train-state.pt"))
    _clean_error(_finetune(world, out, "--resume"), message)


def test_a_training_state_in_the_legacy_format_or_inflating_past_the_budget_is_refused(world, monkeypatch) -> None:
    out, saved = _saved_state(world)
    state_file = out.with_name(out.name + ".train-state.pt")
    torch.save(saved, state_file, _use_new_zipfile_serialization=False)  # storages of declared, unchecked sizes
    _clean_error(_finetune(world, out, "--resume"), "not a torch.save zip archive")
    torch.save(saved, state_file)
    with zipfile.ZipFile(state_file) as archive:  # the same members, deflated: a zip that inflates past the budget
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(state_file, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            archive.writestr(info.filename, data + b"\0" * (2**20 if info.filename.endswith("data.pkl") else 0))
    monkeypatch.setenv("ISSCOMPRESS_MAX_READ_MB", "0.5")
    _clean_error(_finetune(world, out, "--resume"), "decompression or allocation bomb")


def test_a_run_state_that_drops_its_source_hash_is_refused(world, tmp_path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run-state.json").write_text(json.dumps({"recipe": load_recipe(world["recipe"]).to_yaml(),
                                                       "source_sha256": None, "done": ["finetune"]}))
    result = runner.invoke(app, ["run", str(world["model"]), "-r", str(world["recipe"]), "-o", str(folder),
                                 "--resume"])
    _clean_error(result, "source_sha256 the source's sha256")
    (folder / "run-state.json").write_text("[" * 100_000 + "]" * 100_000)
    result = runner.invoke(app, ["run", str(world["model"]), "-r", str(world["recipe"]), "-o", str(folder),
                                 "--resume"])
    _clean_error(result, "nests its JSON too deeply")


def _split_recipe(tmp_path: Path, text: str) -> Path:
    (tmp_path / "corpus.txt").write_text(text)
    recipe = tmp_path / "split.yaml"
    recipe.write_text("data: {split: corpus.txt, split_fractions: [0.8, 0.1]}\n")
    return recipe


def test_split_parts_live_in_a_private_cache_and_a_planted_one_is_never_used(tmp_path, private_cache) -> None:
    text = "".join(f"line {i} of my private text\n" for i in range(40))
    (tmp_path / "corpus.txt").touch(mode=0o600)
    recipe = load_recipe(_split_recipe(tmp_path, text))
    train = Path(recipe.data.train)
    assert private_cache in train.parents and not str(train).startswith("/tmp/isscompress-splits")
    assert stat.S_IMODE(train.stat().st_mode) == 0o600
    for folder in (train.parent, train.parent.parent, train.parent.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert train.read_text() + Path(recipe.data.valid).read_text() + Path(recipe.data.test).read_text() == text
    train.write_text("a planted text\n")  # content that is not this corpus's part is replaced, never trained on
    again = load_recipe(tmp_path / "split.yaml")
    assert Path(again.data.train).read_text() == text[:len(Path(again.data.train).read_text())]
    assert "planted" not in Path(again.data.train).read_text()
    os.chmod(train.parent, 0o777)  # a folder others can write to is refused, not used
    with pytest.raises(Exception, match="can be written by other users"):
        load_recipe(tmp_path / "split.yaml")
    os.chmod(train.parent, 0o700)


def test_the_teacher_is_resolved_against_the_recipe_folder_not_the_working_directory(world, tmp_path,
                                                                                     monkeypatch) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "teacher.safetensors").write_bytes(world["model"].read_bytes())  # a same-named file in the cwd
    monkeypatch.chdir(elsewhere)
    recipe = recipes / "r.yaml"
    recipe.write_text(world["recipe"].read_text() + "distill: {teacher: teacher.safetensors}\n")
    with pytest.raises(Exception, match=r"line \d+: distill.teacher file .*recipes/teacher.safetensors does not"):
        load_recipe(recipe)
    (recipes / "teacher.safetensors").write_bytes(world["model"].read_bytes())
    assert load_recipe(recipe).distill.teacher == str(recipes / "teacher.safetensors")


def test_a_folder_where_the_log_goes_is_refused_before_any_work(world) -> None:
    out = world["out"] / "tuned.safetensors"
    out.with_name(out.name + ".log.jsonl").mkdir()
    _clean_error(_finetune(world, out, "--force"), "is a folder")
    assert not out.exists()


def test_report_plots_replace_a_link_at_their_name_instead_of_writing_through_it(world, tmp_path) -> None:
    plots = tmp_path / "plots"
    plots.mkdir()
    victim = tmp_path / "someone-elses.txt"
    victim.write_text("theirs\n")
    (plots / "group_norms.png").symlink_to(victim)
    result = runner.invoke(app, ["report", str(world["model"]), "--no-speed", "--plot", str(plots)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "theirs\n"
    assert not (plots / "group_norms.png").is_symlink()
    assert (plots / "group_norms.png").read_bytes().startswith(b"\x89PNG")
