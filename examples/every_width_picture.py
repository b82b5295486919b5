"""Draw docs/every-width.png: which rows and columns of which weights one unit of every width owns.

The model has g2pM's shape, scaled down (an embedding, a bidirectional LSTM, a Linear-ReLU-Linear head); the groups
are the ones ``isscompress.discover`` finds for it, read off the same GroupSet description that regularisation,
thresholding and shrinking read. One unit per set is coloured: an embedding dimension, a forward LSTM unit and an
MLP hidden unit.

    python examples/every_width_picture.py [--out docs/every-width.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from torch import nn  # noqa: E402

import isscompress  # noqa: E402

COLOURS = {"embedding": "#1f77b4", "lstm.l0": "#d62728", "head.0": "#2ca02c"}  # the set -> its colour
SHOWN_UNIT = {"embedding": 2, "lstm.l0": 1, "head.0": 3}


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 6)
        self.lstm = nn.LSTM(6, 4, bidirectional=True, batch_first=True)
        self.head = nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 7))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embedding(ids))[0])


def owners(model: nn.Module, plan: isscompress.Plan) -> dict[str, torch.Tensor]:
    """Per 2-D weight: 0 for positions of no shown unit, else 1 + the index of the set whose shown unit owns it."""
    grids = {name: torch.zeros(p.shape, dtype=torch.long) for name, p in model.named_parameters() if p.dim() == 2}
    for index, gs in enumerate(gs for gs in plan.group_sets if gs.name in SHOWN_UNIT):
        for member in gs.members:
            if member.key in grids:
                for start in member.starts:
                    grids[member.key].select(member.axis, start + SHOWN_UNIT[gs.name]).fill_(index + 1)
    return grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "every-width.png")
    args = parser.parse_args()
    model = Tagger()
    plan = isscompress.discover(model, (torch.randint(0, 12, (2, 5)),))
    shown = [gs.name for gs in plan.group_sets if gs.name in SHOWN_UNIT]
    grids = owners(model, plan)
    colours = ListedColormap(["#eeeeee"] + [COLOURS[name] for name in shown])
    figure, axes = plt.subplots(1, len(grids), figsize=(2.2 * len(grids), 4.2),
                                gridspec_kw={"width_ratios": [g.shape[1] + 2 for g in grids.values()]})
    for axis, (name, grid) in zip(axes, grids.items()):
        axis.imshow(grid, cmap=colours, vmin=0, vmax=len(shown), aspect="equal")
        axis.set_xticks([x - 0.5 for x in range(grid.shape[1] + 1)], minor=True)
        axis.set_yticks([y - 0.5 for y in range(grid.shape[0] + 1)], minor=True)
        axis.grid(which="minor", color="white", linewidth=0.8)
        axis.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        axis.set_title(f"{name}\n{tuple(grid.shape)}", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[name]) for name in shown]
    labels = [f"{name} unit {SHOWN_UNIT[name]}" for name in shown]
    figure.legend(handles, labels, loc="lower center", ncol=len(shown), fontsize=8, frameon=False)
    figure.suptitle("One ISS group per width: the rows a unit produces and the columns that read it", fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
