"""PNG plots for ``report --plot``: group-norm histograms per layer, and widths before/after.

matplotlib is an optional extra (``pip install isscompress[plots]``): plots are for people,
the numbers are in the report already.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import IsscompressError
from ..outputs import atomic_write, check_output_path
from ..measure.summary import NORM_THRESHOLDS
from ..verbs.report import Report


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise IsscompressError("--plot needs matplotlib, which is not installed.",
                               "pip install 'isscompress[plots]' (or matplotlib).") from None
    return plt


def write_plots(report: Report, folder: str | Path, threshold: float | None = None,
                inputs: tuple[Path, ...] = ()) -> list[Path]:
    """Write ``group_norms.png`` and (with a shrunk model) ``widths.png``; returns their paths. Each is written
    atomically (a link placed at its name is replaced, never written through) and never over one of ``inputs``."""
    plt = _pyplot()
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise IsscompressError(f"Cannot create the plot folder {folder}: {err.strerror}.", "Choose another folder.") from None
    threshold = threshold if threshold is not None else report.provenance.get("threshold", NORM_THRESHOLDS["1e-4"])
    figures = [(folder / "group_norms.png", lambda path: _norm_histograms(plt, report, path, threshold))]
    if report.shrunk is not None:
        figures.append((folder / "widths.png", lambda path: _widths(plt, report, path)))
    for path, draw in figures:
        check_output_path(path, force=True, inputs=inputs)
        atomic_write(path, lambda temporary, draw=draw: draw(temporary))
    return [path for path, _ in figures]


def _norm_histograms(plt, report: Report, path: Path, threshold: float) -> Path:
    count = len(report.norms)
    figure, axes = plt.subplots(count, 1, figsize=(7, 2.2 * count), squeeze=False)
    for axis, stats in zip(axes[:, 0], report.norms):
        edges = [low for low, _, _ in stats.histogram if low > 0] + [stats.histogram[-1][1]]
        counts = [c for low, _, c in stats.histogram if low > 0]
        zeros = sum(c for low, _, c in stats.histogram if low == 0)
        if counts:
            axis.stairs(counts, edges, fill=True, alpha=0.7)
        axis.set_xscale("log")
        axis.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:g}")
        title = f"{stats.name}: {stats.units} units" + (f", {zeros} exactly zero (not shown)" if zeros else "")
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("units")
        axis.legend(fontsize=8)
    axes[-1, 0].set_xlabel("ISS group L2 norm (log scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
    return path


def _widths(plt, report: Report, path: Path) -> Path:
    labels = [f"layer {c.layer}" for c in report.layers]
    positions = range(len(labels))
    figure, axis = plt.subplots(figsize=(1.6 * len(labels) + 3, 3.2))
    axis.bar([p - 0.2 for p in positions], [c.width_before for c in report.layers], 0.4, label="before")
    axis.bar([p + 0.2 for p in positions], [c.width_after for c in report.layers], 0.4, label="after")
    for p, change in zip(positions, report.layers):
        axis.annotate(f"{change.kept:.0%}", (p + 0.2, change.width_after), ha="center", va="bottom", fontsize=8)
    axis.set_xticks(list(positions), labels)
    axis.set_ylabel("hidden width")
    axis.set_title(f"Widths before and after ISS (multiply-adds {report.mac_ratio:.2f}x fewer)", fontsize=10)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
    return path
