"""Train the BiDAF-style model on SQuAD v1.1 and ISS-compress it with isscompress's any-model API.

This is a user's script: their model (bidaf.py), their data code, their training loop; isscompress
enters through four calls — discover, GroupLasso, shrink_module, resize_to. Only the SQuAD development
set is available offline, so it is split by article (the first 38 articles train, the last 10 evaluate);
every number it prints is on that split, not on the official dev set.

    python examples/squad/squad.py --out runs/squad            # small: ~40 min on 2 CPU cores
    python examples/squad/squad.py --full --train-file train-v1.1.json --dev-file dev-v1.1.json \\
        --device cuda --out runs/squad-full                   # hidden 100, the paper's setting
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import re
import string
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from bidaf import BiDAF  # noqa: E402

import isscompress  # noqa: E402

TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "squad" / "dev-v1.1.json"


# ----- data ---------------------------------------------------------------------------------------
def tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    spans = [(m.start(), m.end()) for m in TOKEN.finditer(text)]
    return [text[a:b].lower() for a, b in spans], spans


def examples(articles: list[dict], max_passage: int) -> list[dict]:
    out = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            words, spans = tokenize(paragraph["context"])
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]
                first, last = answer["answer_start"], answer["answer_start"] + len(answer["text"])
                inside = [i for i, (a, b) in enumerate(spans) if b > first and a < last]
                if not inside or inside[-1] >= max_passage:
                    continue
                out.append({"context": paragraph["context"], "words": words[:max_passage], "spans": spans,
                            "question": tokenize(qa["question"])[0], "start": inside[0], "end": inside[-1],
                            "answers": [a["text"] for a in qa["answers"]]})
    return out


def split_by_article(path: Path, eval_articles: int) -> tuple[list[dict], list[dict]]:
    data = json.loads(path.read_text())["data"]
    return data[:-eval_articles], data[-eval_articles:]


def vocabulary(train: list[dict], min_count: int) -> dict[str, int]:
    counts = collections.Counter(w for ex in train for w in ex["words"] + ex["question"])
    words = sorted(w for w, c in counts.items() if c >= min_count)
    return {w: i + 2 for i, w in enumerate(words)}  # 0 = padding, 1 = unknown


def batches(data: list[dict], vocab: dict[str, int], size: int, shuffle: bool, seed: int = 0):
    """Batches of similar passage length (fewer padded steps), as id tensors."""
    order = sorted(range(len(data)), key=lambda i: len(data[i]["words"]))
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
    for chunk in chunks:
        items = [data[i] for i in chunk]

        def ids(key: str) -> Tensor:
            width = max(len(ex[key]) for ex in items)
            return torch.tensor([[vocab.get(w, 1) for w in ex[key]] + [0] * (width - len(ex[key])) for ex in items])

        yield items, ids("words"), ids("question"), torch.tensor([ex["start"] for ex in items]), \
            torch.tensor([ex["end"] for ex in items])


# ----- the official metric ------------------------------------------------------------------------
def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, gold: str) -> float:
    p, g = normalize(prediction).split(), normalize(gold).split()
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def best_spans(start: Tensor, end: Tensor, max_length: int = 15) -> tuple[Tensor, Tensor]:
    scores = start.log_softmax(-1).unsqueeze(2) + end.log_softmax(-1).unsqueeze(1)  # (B, T, T)
    length = scores.shape[-1]
    allowed = torch.ones(length, length, dtype=torch.bool).triu().tril(max_length - 1)
    flat = scores.masked_fill(~allowed, -1e30).flatten(1).argmax(1)
    return flat // length, flat % length


@torch.no_grad()
def evaluate(model: nn.Module, data: list[dict], vocab: dict[str, int], device: str) -> dict[str, float]:
    model.eval()
    em = f = 0.0
    for items, passage, question, _, _ in batches(data, vocab, 64, shuffle=False):
        start, end = model(passage.to(device), question.to(device))
        for ex, s, e in zip(items, *best_spans(start.float().cpu(), end.float().cpu())):
            text = ex["context"][ex["spans"][int(s)][0]:ex["spans"][int(e)][1]]
            em += max(float(normalize(text) == normalize(g)) for g in ex["answers"])
            f += max(f1(text, g) for g in ex["answers"])
    return {"EM": 100 * em / len(data), "F1": 100 * f / len(data)}


# ----- training: the user's own loop --------------------------------------------------------------
def train(model: nn.Module, data: list[dict], vocab: dict[str, int], epochs: int, lr: float, batch: int,
          device: str, regularizer: isscompress.GroupLasso | None = None, log: str = "",
          teacher: nn.Module | None = None, alpha: float = 0.0) -> None:
    """Adam on the start/end cross-entropy; with a teacher, ``(1 - alpha) * labels + alpha * KL(teacher)``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        began, total, steps = time.time(), 0.0, 0
        for _, passage, question, s, e in batches(data, vocab, batch, shuffle=True, seed=epoch):
            passage, question = passage.to(device), question.to(device)
            start, end = model(passage, question)
            loss = loss_fn(start, s.to(device)) + loss_fn(end, e.to(device))
            if teacher is not None and alpha > 0:
                with torch.no_grad():
                    t_start, t_end = teacher(passage, question)
                match = isscompress.distillation_divergence(start, t_start) + \
                    isscompress.distillation_divergence(end, t_end)
                loss = (1 - alpha) * loss + alpha * match
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            if regularizer is not None:
                regularizer.step(lr)
            total, steps = total + loss.item(), steps + 1
        widths = f" widths {regularizer.widths()}" if regularizer is not None else ""
        print(f"{log} epoch {epoch + 1}/{epochs}: loss {total / steps:.3f} ({time.time() - began:.0f} s){widths}",
              flush=True)


def widths_of(model: BiDAF) -> dict[str, int]:
    return {name: m.hidden_size for name, m in model.named_modules() if isinstance(m, nn.LSTM)}


def forward_seconds(model: nn.Module, passage: Tensor, question: Tensor, repeats: int = 5) -> float:
    model.eval()
    with torch.no_grad():
        model(passage, question)
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            model(passage, question)
            times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SQuAD v1.1 JSON to split by article")
    parser.add_argument("--train-file", type=Path, help="official train-v1.1.json (then --dev-file evaluates)")
    parser.add_argument("--dev-file", type=Path)
    parser.add_argument("--eval-articles", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="the paper's size: hidden 100, embedding 100")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iss-epochs", type=int, default=3)
    parser.add_argument("--recover-epochs", type=int, default=2)
    parser.add_argument("--lam", type=float, default=4.0, help="group Lasso strength (proximal, with Adam's lr)")
    parser.add_argument("--reweight", type=float, default=2.0, help="reweighted group Lasso exponent")
    parser.add_argument("--target", type=float, default=0.5,
                        help="stop shrinking each set at this fraction of its units (0 = let lambda decide)")
    parser.add_argument("--distill", type=float, default=0.0,
                        help="weight of matching the dense model's start/end distributions during ISS and recovery")
    parser.add_argument("--oneshot", type=Path, help=(
        "instead of ISS: remove the weakest units at once, down to the widths of this ISS run's result.json, and "
        "recover for as many epochs as ISS and its recovery took (the one-shot baseline at equal compute)"))
    parser.add_argument("--control", action="store_true",
                        help="instead of ISS: train the dense model as many more epochs (the fair reference)")
    parser.add_argument("--max-passage", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit", type=int, default=0, help="use only this many training questions (smoke runs)")
    parser.add_argument("--dense", type=Path, help="start from this trained dense state dict (skip training)")
    parser.add_argument("--out", type=Path, default=Path("runs/squad"))
    args = parser.parse_args()
    if args.full:
        args.hidden, args.embed = 100, 100
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.train_file:
        train_articles = json.loads(args.train_file.read_text())["data"]
        eval_articles = json.loads((args.dev_file or args.data).read_text())["data"]
    else:
        train_articles, eval_articles = split_by_article(args.data, args.eval_articles)
    train_set = examples(train_articles, args.max_passage)
    eval_set = examples(eval_articles, 10_000)
    if args.limit:
        train_set, eval_set = train_set[:args.limit], eval_set[:max(64, args.limit // 4)]
    vocab = vocabulary(train_set, min_count=2)
    print(f"{len(train_articles)} articles / {len(train_set)} questions to train, {len(eval_articles)} articles / "
          f"{len(eval_set)} questions to evaluate; {len(vocab) + 2} words", flush=True)

    model = BiDAF(len(vocab) + 2, args.embed, args.hidden).to(args.device)
    if args.dense:
        model.load_state_dict(torch.load(args.dense, map_location=args.device, weights_only=True))
    else:
        train(model, train_set, vocab, args.epochs, args.lr, args.batch, args.device, log="dense")
        torch.save(model.state_dict(), args.out / "dense.pt")
    dense = evaluate(model, eval_set, vocab, args.device)
    print(f"dense: {dense}", flush=True)

    # --- ISS with the any-model API, in this script's own loop ---
    _, passage, question, _, _ = next(batches(eval_set, vocab, 16, shuffle=False))
    example = (passage.to(args.device), question.to(args.device))
    plan = isscompress.discover(model, example, features=False)  # the paper's BiDAF ISS: the recurrent layers' units
    print(plan.describe(), flush=True)
    plan.save(args.out / "groups.yaml")
    if args.control:
        train(model, train_set, vocab, args.iss_epochs + args.recover_epochs, args.lr, args.batch, args.device,
              log="control")
        control = {"dense": dense, "control": evaluate(model, eval_set, vocab, args.device),
                   "extra_epochs": args.iss_epochs + args.recover_epochs}
        (args.out / "control.json").write_text(json.dumps(control, indent=2))
        print(json.dumps(control, indent=2))
        return
    targets = {gs.name: max(1, round(gs.size * args.target)) for gs in plan.group_sets} if args.target else None
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if args.distill else None
    recover_epochs = args.recover_epochs
    if args.oneshot:  # the weakest units go at once; recovery gets the ISS stage's epochs too
        counts = json.loads(args.oneshot.read_text())["sets_after"]
        norms = isscompress.all_unit_norms(model.state_dict(), plan.group_sets)
        kept = {name: norm.topk(counts[name]).indices.sort().values for name, norm in norms.items()}
        model.load_state_dict(isscompress.mask_state_dict(model.state_dict(), plan.group_sets, kept))
        recover_epochs += args.iss_epochs
    else:
        lasso = isscompress.GroupLasso(model, plan, lam=args.lam, method="proximal", reweight=args.reweight,
                                       targets=targets)
        train(model, train_set, vocab, args.iss_epochs, args.lr, args.batch, args.device, lasso, log="iss",
              teacher=teacher, alpha=args.distill)
    regularized = evaluate(model, eval_set, vocab, args.device)
    small = isscompress.shrink_module(model, example, threshold=1e-4, plan=plan)
    shrunk = evaluate(small, eval_set, vocab, args.device)
    print(f"before recovery: {regularized}; shrunk to {widths_of(small)}: {shrunk}", flush=True)
    train(small, train_set, vocab, recover_epochs, args.lr / 2, args.batch, args.device, log="recover",
          teacher=teacher, alpha=args.distill)
    recovered = evaluate(small, eval_set, vocab, args.device)
    torch.save(small.state_dict(), args.out / "small.pt")

    _, passage, question, _, _ = next(batches(eval_set[-256:], vocab, 64, shuffle=False))
    speed = {name: forward_seconds(m, passage.to(args.device), question.to(args.device))
             for name, m in (("dense", model), ("small", small))}
    result = {
        "split": "SQuAD v1.1 dev, by article" if not args.train_file else "official train / dev",
        "train_questions": len(train_set), "eval_questions": len(eval_set), "hidden": args.hidden,
        "method": "one-shot" if args.oneshot else "ISS", "embed": args.embed, "lambda": args.lam, "target": args.target, "distill": args.distill,
        "reweight": args.reweight, "epochs": [args.epochs, 0 if args.oneshot else args.iss_epochs, recover_epochs],
        "dense": dense, "before_recovery": regularized, "shrunk": shrunk, "recovered": recovered,
        "widths_before": widths_of(model), "widths_after": widths_of(small),
        "sets_after": {name: int((norm > 1e-4).sum())
                       for name, norm in isscompress.all_unit_norms(model.state_dict(), plan.group_sets).items()},
        "parameters": [sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters())],
        "forward_seconds_batch64": speed, "threads": torch.get_num_threads(), "device": args.device,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
