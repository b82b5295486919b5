"""Rich rendering of the library's result dataclasses. The only module besides cli.py that draws."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .inspection import Inspection
from .shrinking import ShrinkResult
from .summary import ModelSummary, NormStats

BARS = " ▁▂▃▄▅▆▇█"
PARTS = ("embedding", "recurrent", "decoder")


def human(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{count:.0f}"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def sparkline(stats: NormStats) -> str:
    counts = [count for _, _, count in stats.histogram]
    top = max(counts) if counts else 0
    return "".join(BARS[0 if not c else max(1, round(8 * c / top))] for c in counts)


def layers_table(summary: ModelSummary, title: str = "Recurrent layers") -> Table:
    table = Table(title=title)
    for column in ("layer", "cell", "input", "width", "directions", "projection"):
        table.add_column(column, justify="right" if column != "cell" else "left")
    for layer in summary.layers:
        table.add_row(str(layer.index), layer.cell, str(layer.input_size), str(layer.width),
                      str(layer.directions), str(layer.proj_size or "-"))
    return table


def costs_table(summary: ModelSummary) -> Table:
    table = Table(title="Cost per token")
    for column in ("part", "parameters", "multiply-adds"):
        table.add_column(column, justify="right" if column != "part" else "left")
    for part in PARTS:
        table.add_row(part, human(summary.parameters[part]), human(summary.macs_per_token[part]))
    table.add_row("total", human(summary.total_parameters), human(summary.total_macs), style="bold")
    return table


def norms_table(norms: tuple[NormStats, ...]) -> Table:
    table = Table(title="ISS group norms per layer (units with norm ≤ threshold)")
    table.add_column("group set", no_wrap=True)
    table.add_column("units", justify="right", no_wrap=True)
    for q in ("min", "median", "max"):
        table.add_column(q, justify="right", no_wrap=True)
    for threshold in norms[0].under if norms else ():
        table.add_column(f"≤{threshold}", justify="right", no_wrap=True)
    table.add_column("histogram", no_wrap=True, min_width=8)
    for stats in norms:
        q = stats.quantiles
        table.add_row(stats.name, str(stats.units), f"{q['q00']:.3g}", f"{q['q50']:.3g}", f"{q['q100']:.3g}",
                      *(str(n) for n in stats.under.values()), sparkline(stats))
    return table


def render_inspection(result: Inspection, console: Console) -> None:
    s = result.summary
    tied = ", tied embedding" if s.tied else ""
    vocab = f", vocabulary {s.vocab_size}" if s.vocab_size else ", bare recurrent stack"
    layout = f" ({s.layout} layout)" if s.layout != s.family else ""
    console.print(f"[bold]{result.path}[/]: family [cyan]{s.family}[/]{layout}, {s.cell}{vocab}{tied}, "
                  f"{human_bytes(s.file_bytes)}")
    console.print(layers_table(s))
    console.print(costs_table(s))
    console.print(norms_table(result.norms))


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "-"


def render_shrink(result: ShrinkResult, console: Console) -> None:
    table = Table(title=f"Shrunk {result.source.name} → {result.output.name} (threshold {result.threshold:g})")
    for column in ("", "before", "after", "ratio"):
        table.add_column(column, justify="left" if not column else "right")
    for name, before in result.widths_before.items():
        table.add_row(f"width {name}", str(before), str(result.widths_after[name]),
                      f"{result.widths_after[name] / before:.0%} kept")
    b, a = result.before, result.after
    for part in PARTS:
        if b.parameters[part]:
            table.add_row(f"parameters {part}", human(b.parameters[part]), human(a.parameters[part]),
                          _ratio(b.parameters[part], a.parameters[part]))
    table.add_row("parameters total", human(b.total_parameters), human(a.total_parameters),
                  _ratio(b.total_parameters, a.total_parameters), style="bold")
    table.add_row("multiply-adds / token", human(b.total_macs), human(a.total_macs),
                  _ratio(b.total_macs, a.total_macs), style="bold")
    table.add_row("file size", human_bytes(b.file_bytes), human_bytes(a.file_bytes),
                  _ratio(b.file_bytes or 0, a.file_bytes or 0))
    console.print(table)
    console.print(f"Checked: shrunk and masked models agree to {result.max_abs_diff:.2g} "
                  f"(tolerance {result.tolerance:.2g}) on a probe batch.")
