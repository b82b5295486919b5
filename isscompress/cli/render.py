"""Rich rendering of the library's result dataclasses. The only module besides cli.py that draws."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the CLI answers --help and usage errors without importing torch
    from ..measure.summary import ModelSummary, NormStats
    from ..verbs.inspect import Inspection
    from ..verbs.shrink import ShrinkResult

BARS = " ▁▂▃▄▅▆▇█"


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
    deep = any(layer.depth > 1 for layer in summary.layers)
    for column in ("layer", "cell", "input", "width", *(["depth"] if deep else []), "directions", "projection"):
        table.add_column(column, justify="right" if column != "cell" else "left")
    for layer in summary.layers:
        table.add_row(escape(layer.name) or str(layer.index), layer.cell, str(layer.input_size), str(layer.width),
                      *([str(layer.depth)] if deep else []), str(layer.directions), str(layer.proj_size or "-"))
    return table


def costs_table(summary: ModelSummary) -> Table:
    table = Table(title="Cost per token")
    for column in ("part", "parameters", "multiply-adds"):
        table.add_column(column, justify="right" if column != "part" else "left")
    for part in dict.fromkeys([*summary.parameters, *summary.macs_per_token]):
        table.add_row(part, human(summary.parameters.get(part, 0)), human(summary.macs_per_token.get(part, 0)))
    table.add_row("total", human(summary.total_parameters), human(summary.total_macs), style="bold")
    return table


def norms_table(norms: tuple[NormStats, ...], readers: dict[str, list[str]] | None = None) -> Table:
    table = Table(title="ISS group norms per layer (units with norm ≤ threshold)")
    table.add_column("group set", no_wrap=True)
    table.add_column("units", justify="right", no_wrap=True)
    for q in ("min", "median", "max"):
        table.add_column(q, justify="right", no_wrap=True)
    for threshold in norms[0].under if norms else ():
        table.add_column(f"≤{threshold}", justify="right", no_wrap=True)
    table.add_column("histogram", no_wrap=True, min_width=8)
    if readers:
        table.add_column("read by")
    for stats in norms:
        q = stats.quantiles
        table.add_row(escape(stats.name), str(stats.units), f"{q['q00']:.3g}", f"{q['q50']:.3g}", f"{q['q100']:.3g}",
                      *(str(n) for n in stats.under.values()), sparkline(stats),
                      *([escape(", ".join(readers.get(stats.name, [])))] if readers else []))
    return table


def render_inspection(result: Inspection, console: Console) -> None:
    s = result.summary
    tied = ", tied embedding" if s.tied else ""
    kinds = {"recurrent_stack": ", bare recurrent stack", "onnx-graph": ", an ONNX graph's recurrent layers"}
    vocab = f", vocabulary {s.vocab_size}" if s.vocab_size else kinds.get(s.architecture, ", your own model (--arch)")
    vocab += f" -> {s.classes} classes per token" if s.classes else ""
    layout = f" ({s.layout} layout)" if s.layout != s.family else ""
    console.print(f"[bold]{escape(str(result.path))}[/]: family [cyan]{s.family}[/]{layout}, {s.cell}{vocab}{tied}, "
                  f"{s.dtype}, {human_bytes(s.file_bytes)}")
    console.print(f"Cell equations assumed: {escape(result.equations)}.")
    if result.ignored:
        console.print(f"Ignored beside the weights: {escape(', '.join(result.ignored))}.")
    console.print(layers_table(s))
    console.print(costs_table(s))
    console.print(norms_table(result.norms, result.readers))
    for module, why in result.left_whole.items():
        console.print(f"Left whole: {escape(module)} — {escape(why.rstrip('.'))}.")


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "-"


PART_LABELS = {"attention": "attention (example lengths)"}  # a part that is not per token alone


def _cost_rows(table: Table, b: ModelSummary, a: ModelSummary | None, *, per_part_macs: bool) -> None:
    """Parameters, multiply-adds and file size, before → after (after and ratio blank for one model)."""

    def row(label: str, before, after, show=human, style: str | None = None) -> None:
        table.add_row(label, show(before), show(after) if a else "", _ratio(before or 0, after or 0) if a else "",
                      style=style)

    for part, count in b.parameters.items():
        if count:
            row(f"parameters {part}", count, a.parameters.get(part, 0) if a else None)
    row("parameters total", b.total_parameters, a.total_parameters if a else None, style="bold")
    for part, count in b.macs_per_token.items() if per_part_macs else ():
        if count:
            row(f"multiply-adds {PART_LABELS.get(part, part)}", count, a.macs_per_token.get(part, 0) if a else None)
    row("multiply-adds / token", b.total_macs, a.total_macs if a else None, style="bold")
    row("file size", b.file_bytes, a.file_bytes if a else None, show=human_bytes)


def render_shrink(result: ShrinkResult, console: Console) -> None:
    source, output = (path.name if path else "(in memory)" for path in (result.source, result.output))
    table = Table(title=f"Shrunk {source} → {output} (threshold {result.threshold:g})")
    for column in ("", "before", "after", "ratio"):
        table.add_column(column, justify="left" if not column else "right")
    for name, before in result.widths_before.items():
        table.add_row(f"width {name}", str(before), str(result.widths_after[name]),
                      f"{result.widths_after[name] / before:.0%} kept")
    _cost_rows(table, result.before, result.after, per_part_macs=False)
    console.print(table)
    if result.checked:
        console.print(f"Checked: shrunk and masked models agree to {result.max_abs_diff:.2g} "
                      f"(tolerance {result.tolerance:.2g}) on a probe batch.")
    else:
        console.print("NOT checked: with --groups alone there is no model to run; pass --arch to check it.",
                      style="yellow")
    if result.changes_the_function:
        console.print(f"[bold yellow]warning:[/] the removed units were not zero (largest removed group norm "
                      f"{result.largest_removed_norm:.3g}), so the shrunk model is the masked model, not the original: "
                      f"on the probe its outputs differ from the original's by up to {result.original_max_abs_diff:.3g} "
                      f"(outputs up to {result.output_scale:.3g}). Fine-tune with ISS first (isscompress finetune) so "
                      "that the units reach zero, or measure the loss (isscompress eval / report).")


class TrainingProgress:
    """Live fine-tuning progress on stderr: one bar per epoch with loss, ppl, tokens/s and alive units."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                 console=console, transient=False)
        self.tasks: dict[tuple[str, int], int] = {}
        self.stage = "finetune"

    def __enter__(self) -> "TrainingProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        if stage in ("shrink", "report"):
            self.console.print(f"[bold]{stage}[/] ...")

    def __call__(self, event: dict) -> None:
        if event["event"] == "warning":
            self.console.print(f"[bold yellow]warning:[/] {escape(event['text'])}")
            return
        if event["event"] == "kept_best":
            self.console.print(escape(event["text"]))
            return
        if event["event"] == "metrics":
            shown = ", ".join(f"{escape(k)} {v:.4g}" for k, v in event["metrics"].items())
            self.console.print(f"{self.stage} start (after any one-shot removal): {shown}")
            return
        if event["event"] not in ("step", "epoch"):  # other events (a completed target) are for the log
            return
        key = (self.stage, event["epoch"])
        if event["event"] == "step":
            if key not in self.tasks:
                self.tasks[key] = self.progress.add_task(f"{self.stage} epoch {event['epoch']}",
                                                         total=event["windows"], status="")
            alive = event.get("alive")
            alive_text = " alive " + "/".join(str(v) for v in alive.values()) if alive else ""
            ppl = f" ppl {event['ppl']:.1f}" if "ppl" in event else ""
            rate = (f"{event['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in event
                    else f"{event.get('batches_per_s', 0):,.1f} batches/s")
            status = f"loss {event['loss']:.3f}{ppl} lr {event['lr']:.3g} {rate}{alive_text}"
            self.progress.update(self.tasks[key], completed=event["window"], status=status)
        elif event["event"] == "epoch":
            valid = f" valid ppl {event['valid_ppl']:.2f}" if "valid_ppl" in event else ""
            alive = event.get("alive")
            alive_text = " alive " + ", ".join(f"{k} {v}" for k, v in alive.items()) if alive else ""
            loss = event["train_loss"]
            metrics = "".join(f", {escape(k)} {v:.4g}" for k, v in event.get("metrics", {}).items())
            best = f" (best: epoch {event['best_epoch']})" if "best_epoch" in event else ""
            self.console.print(f"{self.stage} epoch {event['epoch']}: train loss {loss:.4g}"
                               f"{valid}{metrics}{alive_text}{best} ({event['seconds']:.0f} s)")


def render_metrics(name: str, metrics: dict[str, float], console: Console) -> None:
    """A user model's own metrics (its factory's evaluate), one line each."""
    for metric, value in metrics.items():
        console.print(f"{escape(name)}: {escape(metric)} [bold]{value:.4g}[/]")


def render_perplexity(name: str, result, console: Console) -> None:
    if result.level == "char":
        console.print(f"{escape(name)}: [bold]{result.bits_per_token:.3f}[/] bits per character (perplexity "
                      f"{result.perplexity:.2f}, {result.tokens:,} characters, {result.tokens_per_second:,.0f}/s)")
        return
    vocabulary = f"; vocabulary {escape(result.vocabulary)}" if result.vocabulary else ""
    console.print(f"{escape(name)}: perplexity [bold]{result.perplexity:.2f}[/] (loss {result.loss:.4f}, "
                  f"{result.tokens:,} tokens, {result.tokens_per_second:,.0f} tokens/s{vocabulary})")


def render_report(report, console: Console) -> None:
    b, a = report.original, report.shrunk
    title = f"isscompress report: {b.family}" + (" (before → after)" if a else "")
    table = Table(title=title)
    for column in ("", "before", "after", "ratio"):
        table.add_column(column, justify="left" if not column else "right", no_wrap=True)
    for change in report.layers:
        proj = f" (proj {change.proj_before}→{change.proj_after})" if change.proj_before else ""
        table.add_row(f"width {escape(change.label)}{proj}", str(change.width_before), str(change.width_after),
                      f"{change.kept:.0%} kept")
    if not report.layers:
        for layer in b.layers:
            table.add_row(f"width {escape(layer.name) or f'layer {layer.index}'}", str(layer.width), "", "")
    for name in report.feature_sets:  # embedding dimensions, MLP units: widths beside the recurrent layers'
        before, after = report.widths[name]
        table.add_row(f"width {escape(name)}", str(before), str(after), f"{after / before:.0%} kept")
    _cost_rows(table, b, a, per_part_macs=True)
    pb, pa = report.perplexity_before, report.perplexity_after
    if pb is not None:
        delta = report.perplexity_delta
        table.add_row("perplexity", f"{pb.perplexity:.2f}", f"{pa.perplexity:.2f}" if pa else "",
                      f"Δ {delta:+.2f}" if delta is not None else "", style="bold")
        if pb.level == "char":
            table.add_row("bits per character", f"{pb.bits_per_token:.3f}", f"{pa.bits_per_token:.3f}" if pa else "",
                          f"Δ {pa.bits_per_token - pb.bits_per_token:+.3f}" if pa else "", style="bold")
    for sample in report.speed:
        label = {"decode_batch1": "tokens/s, decode batch 1", "batch20x35": "tokens/s, batch 20x35",
                 "example_inputs": "calls/s, forward on the example inputs",
                 "factory_batches": "calls/s, forward on the factory's batches"}[sample.workload]
        table.add_row(label, f"{sample.before_tokens_per_s:,.0f}",
                      f"{sample.after_tokens_per_s:,.0f}",
                      f"{sample.speedup:.2f}x ({min(sample.speedups):.2f}-{max(sample.speedups):.2f})")
    if report.int8 is not None:
        _int8_rows(table, report)
    for name, (before, after) in report.metrics.items():
        table.add_row(escape(name), f"{before:.4g}", f"{after:.4g}" if after is not None else "",
                      f"Δ {after - before:+.4g}" if after is not None else "", style="bold")
    if report.output_gap is not None:
        gap = report.output_gap
        agreement = f"{gap.agreement:.1%} top-1" if gap.agreement is not None else ""
        table.add_row("output gap (KL), probe inputs", "", f"{gap.divergence:.4g}", agreement, style="bold")
    console.print(table)
    _report_notes(report, console)


def _int8_rows(table: Table, report) -> None:
    b, q, pb = report.original, report.int8, report.perplexity_before
    table.add_row("int8 (shrunk): size", human_bytes(b.file_bytes), human_bytes(q.bytes),
                  f"{b.file_bytes / q.bytes:.2f}x" if b.file_bytes else "", style="cyan")
    if q.perplexity is not None and pb is not None:
        table.add_row("int8 (shrunk): perplexity", f"{pb.perplexity:.2f}", f"{q.perplexity.perplexity:.2f}",
                      f"Δ {q.perplexity.perplexity - pb.perplexity:+.2f}", style="cyan")
    for sample in q.speed:
        label = {"decode_batch1": "decode batch 1", "batch20x35": "batch 20x35"}[sample.workload]
        table.add_row(f"int8 (shrunk): tokens/s, {label}", f"{sample.before_tokens_per_s:,.0f}",
                      f"{sample.after_tokens_per_s:,.0f}", f"{sample.speedup:.2f}x", style="cyan")


def _report_notes(report, console: Console) -> None:
    """Warnings, how speed was measured, the perplexity's data, the norms of a single model, the lineage."""
    for text in report.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(text)}")
    if report.speed:
        console.print(f"Speed: before and after interleaved, medians of {len(report.speed[0].speedups)} runs, "
                      f"torch {report.environment['torch']}, {report.environment['threads']} thread(s); "
                      f"MAC ratio {report.mac_ratio:.2f}x. " + (
                          "PyTorch eager: batch-1 decoding runs on PyTorch's native RNN kernel for both models (oneDNN "
                          "re-lays-out weights on every call); the 20x35 batch runs on oneDNN."
                          if report.speed[0].path == "eager" and report.speed[0].unit == "tokens"
                          else f"Runtime: {report.speed[0].path}."))
    if report.data:
        vocabulary = f" Vocabulary: {escape(report.vocabulary)}." if report.vocabulary else ""
        console.print(f"Perplexity on {escape(report.data)}.{vocabulary}")
    if report.shrunk is None:
        console.print(norms_table(report.norms))
    prov = report.provenance
    if prov.get("lineage"):
        steps = " → ".join(f"{s['from']} ({(s['sha256'] or 'in memory')[:9]}, then {s['stage']})"
                           for s in prov["lineage"])
        threshold = f"; shrink threshold {prov['threshold']:g}" if "threshold" in prov else ""
        console.print(f"Lineage: {escape(steps)}{threshold}")
