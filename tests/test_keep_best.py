"""keep: best — a stage whose units are fixed ends with the weights of its best-validating epoch (#32, item 5)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import isscompress
from isscompress.errors import RecipeError
from test_bad_input_matrix import make_world


def _recover(world, valid, epochs: int, keep: str, out):
    world["recipe"].write_text(f"data: {{train: {world['text']}, valid: {valid}}}\n"
                               f"recover: {{epochs: {epochs}, batch_size: 4, bptt: 5, lr: 5.0, keep: {keep}}}\n")
    return isscompress.finetune(world["model"], world["recipe"], out, stage="recover")


def test_a_language_model_keeps_its_best_validating_epoch(tmp_path) -> None:
    world = make_world(tmp_path)
    valid = tmp_path / "valid.txt"
    valid.write_text(" a c b \n c c a \n" * 20)  # other text than training: at lr 5 it validates worse after epoch 2
    best = _recover(world, valid, 4, "best", tmp_path / "best.safetensors")
    perplexities = [e["valid_ppl"] for e in best.events if e["event"] == "epoch"]
    chosen = min(range(4), key=perplexities.__getitem__) + 1
    assert chosen < 4 and perplexities[-1] > perplexities[chosen - 1]  # the case keep: best is for
    (kept,) = [e for e in best.events if e["event"] == "kept_best"]
    assert kept["epoch"] == chosen and kept["score"] == pytest.approx(perplexities[chosen - 1])
    # the written weights are those of a run that stopped after that epoch (same seed, same steps)
    shorter = _recover(world, valid, chosen, "last", tmp_path / "short.safetensors")
    assert shorter.events[-1]["event"] != "kept_best"
    written, expected = load_file(tmp_path / "best.safetensors"), load_file(tmp_path / "short.safetensors")
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in written)
    evaluated = isscompress.evaluate(tmp_path / "best.safetensors", valid, family="isscompress")
    assert evaluated.perplexity == pytest.approx(perplexities[chosen - 1], rel=1e-4)


def test_keep_best_where_it_cannot_choose_is_refused_by_its_line(tmp_path) -> None:
    world = make_world(tmp_path)
    world["recipe"].write_text(f"data: {{train: {world['text']}}}\nfinetune: {{epochs: 1, keep: best}}\n"
                               "iss: {target: {macs: 0.5}}\n")
    with pytest.raises(RecipeError, match="during ISS an earlier epoch holds units the stage removes later"):
        isscompress.finetune(world["model"], world["recipe"])
    world["recipe"].write_text(f"data: {{train: {world['text']}}}\nrecover: {{epochs: 1, keep: best}}\n")
    with pytest.raises(RecipeError, match="recover.keep: best compares each epoch's validation perplexity"):
        isscompress.finetune(world["model"], world["recipe"], tmp_path / "o.safetensors", stage="recover")
    assert not (tmp_path / "o.safetensors").exists() and not list(tmp_path.glob("o.safetensors*"))


FACTORY = '''
import torch
from anymodel_zoo import GRUTagger, tokens

METRICS = {"agreement": {"better": "higher"}}
TEACHER = GRUTagger()
TEACHER.load_state_dict(torch.load("{teacher}"))
PROBE = tokens(6, 5, seed=11)

def evaluate(model):
    with torch.no_grad():
        return {"agreement": float((model(PROBE).argmax(-1) == TEACHER.eval()(PROBE).argmax(-1)).float().mean())}

def make():
    torch.manual_seed(0)
    return GRUTagger(), (tokens(5, 3),), [(tokens(7, 4, seed=s),) for s in range(4)], evaluate
'''


def test_a_user_model_keeps_the_epoch_its_declared_metric_liked_best(tmp_path) -> None:
    from anymodel_zoo import GRUTagger

    torch.manual_seed(0)
    teacher = GRUTagger()
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp_path / "m.safetensors"))
    (tmp_path / "arch.py").write_text(FACTORY.replace("{teacher}", str(tmp_path / "teacher.pt")))
    (tmp_path / "r.yaml").write_text("recover: {epochs: 3, lr: 0.3, optimizer: adam, keep: best}\n"
                                     "distill: {alpha: 1.0}\n")
    result = isscompress.finetune(tmp_path / "m.safetensors", tmp_path / "r.yaml", tmp_path / "o.safetensors",
                                  arch=f"{tmp_path / 'arch.py'}:make", stage="recover")
    scores = [e["metrics"]["agreement"] for e in result.events if e["event"] == "epoch"]
    (kept,) = [e for e in result.events if e["event"] == "kept_best"]
    assert kept["score"] == max(scores) and scores[kept["epoch"] - 1] == max(scores) and kept["epoch"] < 3, scores
    assert [e["best_epoch"] for e in result.events if e["event"] == "epoch"][-1] == kept["epoch"]
    assert result.checkpoint.spec.evaluate(result.checkpoint.model()) == {"agreement": max(scores)}
