"""``report``: what compression bought, measured. Pure data; JSON and Markdown views of it."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..anymodel.split import unsplit_name
from ..core.architecture import language_model_facts
from ..core.groups import all_unit_norms
from ..data import Vocabulary
from ..errors import DataError, IsscompressError
from ..io.loading import Checkpoint, as_checkpoint
from ..measure.perplexity import Perplexity, perplexity
from ..measure.speed import SpeedSample
from ..measure.summary import ModelSummary, NormStats, norm_stats, summarize_checkpoint
from ..recipe import DataSection, EvaluateSection
from ..measure.output_gap import AGREEMENT_WARNING, GAP_WARNING, OutputGap
from .comparison import (Int8Column, check_speed_on, int8_column, metric_rules, output_gap, own_input_calls,
                         refuse_int8, speed_samples, task_metrics)
from .reuse import measured_on, reused_metrics
from .preparation import resolve_vocabulary, token_batches


QUALITY_WARNING = 0.01  # a perplexity rise beyond 1% of the original's is flagged, not only printed
@dataclass(frozen=True)
class LayerChange:
    layer: int
    width_before: int
    width_after: int
    proj_before: int
    proj_after: int
    directions: int
    name: str = ""  # the module's name in a user's model

    @property
    def label(self) -> str:
        return self.name or f"layer {self.layer}"

    @property
    def kept(self) -> float:
        return self.width_after / self.width_before


@dataclass
class Report:
    original: ModelSummary
    shrunk: ModelSummary | None = None
    layers: list[LayerChange] = field(default_factory=list)
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)  # units per group set, before and after
    feature_sets: tuple[str, ...] = ()  # the sets of ``widths`` that are not recurrent layers (embedding, MLP units)
    norms: tuple[NormStats, ...] = ()
    perplexity_before: Perplexity | None = None
    perplexity_after: Perplexity | None = None
    data: str | None = None
    vocabulary: str | None = None  # where the vocabulary of the perplexities came from
    speed: list[SpeedSample] = field(default_factory=list)
    int8: "Int8Column | None" = None  # the shrunk model after int8 quantisation, against the original
    output_gap: OutputGap | None = None  # a model without perplexity: its outputs against the original's
    metrics: dict[str, tuple[float, float | None]] = field(default_factory=dict)  # the task's own, before and after
    metric_rules: dict[str, dict[str, Any]] = field(default_factory=dict)  # which way is better, and the noise
    measured_on: dict[str, Any] = field(default_factory=dict)  # the original's file and factory (see verbs/reuse.py)
    provenance: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def perplexity_delta(self) -> float | None:
        if self.perplexity_before and self.perplexity_after:
            return self.perplexity_after.perplexity - self.perplexity_before.perplexity
        return None

    @property
    def warnings(self) -> list[str]:
        """What a reader should not miss: a quality loss beyond ``QUALITY_WARNING`` of the original's perplexity."""
        found = []
        delta = self.perplexity_delta
        if delta is not None and delta > QUALITY_WARNING * self.perplexity_before.perplexity:
            found.append(f"perplexity rose by {delta / self.perplexity_before.perplexity:.1%} "
                         f"({self.perplexity_before.perplexity:.2f} -> {self.perplexity_after.perplexity:.2f}): the "
                         "shrunk model is measurably worse. Recover longer (recover.epochs), give ISS a target it can "
                         "reach (iss.target, iss.target_widths), or remove fewer units.")
        for name, (before, after) in self.metrics.items():
            rule = self.metric_rules.get(name)
            if rule is None or after is None:
                continue
            loss = (before - after) if rule["better"] == "higher" else (after - before)
            noise = rule.get("noise")
            allowed = noise if noise is not None else QUALITY_WARNING * abs(before)
            if loss > allowed:
                within = f"its noise {noise:.3g}" if noise is not None else f"{QUALITY_WARNING:.0%} of the original's"
                found.append(f"{name} got worse, {before:.4g} -> {after:.4g} ({rule['better']} is better), beyond "
                             f"{within}: the shrunk model is measurably worse at its task. Recover longer, remove "
                             "fewer units, or try another method (docs/iss.md).")
        # Without the task's own metric, the outputs on the example inputs are the only evidence; with it, they are not
        # (they include positions the task never reads, such as a tagger's markers), so the metric speaks instead.
        gap = self.output_gap if not self.metrics else None
        if gap is not None and gap.agreement is not None and gap.agreement < AGREEMENT_WARNING:
            found.append(f"the shrunk model's top-1 output differs from the original's at {1 - gap.agreement:.1%} "
                         "of the example positions: it is measurably a different model. Fine-tune longer or with a "
                         "smaller lambda (or a target), and measure it on your task's metric.")
        elif gap is not None and gap.divergence > GAP_WARNING:
            found.append(f"the output gap {gap.divergence:.3g} is large (0 is identical; above {GAP_WARNING} outputs "
                         "move noticeably). Measure the shrunk model on your task's metric before shipping it.")
        return found

    @property
    def mac_ratio(self) -> float | None:
        return self.original.total_macs / self.shrunk.total_macs if self.shrunk else None

    def to_dict(self) -> dict[str, Any]:
        def maybe(obj):
            return obj.to_dict() if obj is not None else None

        return {
            "original": self.original.to_dict(), "shrunk": maybe(self.shrunk),
            "layers": [{**c.__dict__, "kept": c.kept} for c in self.layers],
            "widths": {name: list(pair) for name, pair in self.widths.items()}, "feature_sets": list(self.feature_sets),
            "parameter_ratio": (self.original.total_parameters / self.shrunk.total_parameters) if self.shrunk else None,
            "mac_ratio": self.mac_ratio,
            "file_size_ratio": (self.original.file_bytes / self.shrunk.file_bytes)
            if self.shrunk and self.original.file_bytes and self.shrunk.file_bytes else None,
            "perplexity": {"data": self.data, "vocabulary": self.vocabulary, "before": maybe(self.perplexity_before),
                           "after": maybe(self.perplexity_after), "delta": self.perplexity_delta},
            "speed": [s.to_dict() for s in self.speed],
            "int8": maybe(self.int8), "output_gap": maybe(self.output_gap),
            "metrics": {name: list(pair) for name, pair in self.metrics.items()}, "metric_rules": self.metric_rules,
            "measured_on": self.measured_on,
            "group_norms": [n.to_dict() for n in self.norms],
            "provenance": self.provenance, "environment": self.environment, "warnings": self.warnings,
        }


def _environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine()}


def _provenance(checkpoint: Checkpoint) -> dict[str, Any]:
    keys = ("stage", "threshold", "source", "lineage", "recipe", "max_abs_diff")
    values = {k: getattr(checkpoint.metadata, k) for k in keys}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v not in (None, ())}


def _same_vocabulary(a: Vocabulary, b: Vocabulary, names: tuple[str, str]) -> None:
    if a.words != b.words:
        raise DataError(f"{names[0]} and {names[1]} were trained with different vocabularies "
                        f"({len(a)} and {len(b)} words).", "Compare models that share one vocabulary.")


def _check_comparable(original: Checkpoint, shrunk: Checkpoint) -> None:
    if original.family != shrunk.family:
        raise IsscompressError(f"{original.name} is a {original.family} model but {shrunk.name} is a "
                               f"{shrunk.family} model.", "Compare a model with its own shrunk version.")
    facts, other = language_model_facts(original.spec), language_model_facts(shrunk.spec)
    if (facts and facts.vocab_size) != (other and other.vocab_size):
        raise DataError(f"{original.name} has a vocabulary of {facts.vocab_size if facts else 0} words but "
                        f"{shrunk.name} has {other.vocab_size if other else 0}.",
                        "Compare models that share one vocabulary.")


def _layer_changes(before: ModelSummary, after: ModelSummary) -> list[LayerChange]:
    return [LayerChange(a.index, a.width, b.width, a.proj_size, b.proj_size, a.directions, a.name)
            for a, b in zip(before.layers, after.layers)]


def _perplexities(report: Report, original: Checkpoint, shrunk: Checkpoint | None, data: Path, section: DataSection,
                  evaluate: EvaluateSection, max_tokens: int | None,
                  on_progress: Callable[[str, int, int], None] | None) -> torch.Tensor:
    """Both models' perplexity on the same batches of ``data``, with one vocabulary; returns the batches."""
    if not language_model_facts(original.spec):
        raise DataError(f"Perplexity needs a language model; {original.name} is not one.",
                        "Leave out --data; a model without perplexity is compared by its outputs on its probe inputs.")
    vocabulary, origin = resolve_vocabulary(original, section)
    batches = token_batches(data, vocabulary, evaluate.batch_size, max_tokens, section.level)
    report.data, report.vocabulary = str(data), origin

    def progress(label: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: on_progress(label, done, total)) if on_progress else None

    report.perplexity_before = perplexity(original.model(), batches, evaluate.bptt, level=section.level,
                                          on_window=progress(f"perplexity {original.name}"))
    if shrunk is not None:
        _same_vocabulary(vocabulary, resolve_vocabulary(shrunk, section)[0], (original.name, shrunk.name))
        report.perplexity_after = perplexity(shrunk.model(), batches, evaluate.bptt, level=section.level,
                                             on_window=progress(f"perplexity {shrunk.name}"))
    return batches


def report(
    original: Checkpoint | str | os.PathLike,
    shrunk: Checkpoint | str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    vocab: str = "auto",
    vocab_source: DataSection | None = None,
    evaluate: EvaluateSection = EvaluateSection(),
    max_tokens: int | None = None,
    speed: bool = True,
    repeats: int = 5,
    family: str | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    int8: bool = False,
    speed_path: str = "auto",
    arch: str | None = None,
    groups: str | os.PathLike | None = None,
    speed_on: str = "example",
    reuse: str | os.PathLike | None = None,
) -> Report:
    """Compare a model with its shrunk version (or describe one model) on the same data and machine;
    with ``int8``, also the shrunk model quantised to int8 (size, perplexity, speed against the original).
    ``arch`` (FILE.py:FACTORY) opens both as checkpoints of a user's own model: its speed is timed on the example
    inputs, or with ``speed_on="batches"`` on the factory's first batches; ``reuse`` (an earlier report's JSON of
    the same original and factory) gives the original's task metrics without measuring them again."""
    check_speed_on(speed_on)
    original = as_checkpoint(original, family, arch, groups)
    shrunk = as_checkpoint(shrunk, family, arch) if shrunk is not None else None
    if shrunk is not None:
        _check_comparable(original, shrunk)
    result = Report(summarize_checkpoint(original), environment=_environment())
    result.norms = tuple(norm_stats(n, v) for n, v in all_unit_norms(original.state, original.group_sets).items())
    result.provenance = _provenance(shrunk or original)
    if shrunk is not None:
        _compare_shapes(result, original, shrunk)
    batches = None
    if data is not None:
        section = vocab_source or DataSection(test=Path(data), vocab=vocab, level=original.metadata.level or "word")
        batches = _perplexities(result, original, shrunk, Path(data), section, evaluate, max_tokens, on_progress)
    before_model, after_model = original.model(), shrunk.model() if shrunk is not None else None
    calls = _task_measures(result, original, shrunk, before_model, after_model, reuse)
    if speed and shrunk is not None:
        if on_progress:
            on_progress("speed", 0, 1)
        result.speed = speed_samples((original, shrunk), before_model, after_model, calls, repeats, speed_path,
                                     speed_on)
    if int8:
        refuse_int8(shrunk, calls is not None)
        result.int8 = int8_column(original, shrunk, batches, evaluate, original.metadata.level or "word", speed, repeats)
    return result


def _task_measures(result: Report, original: Checkpoint, shrunk: Checkpoint | None, before: nn.Module,
                   after: nn.Module | None, reuse: str | os.PathLike | None):
    """A user model's output gap on its own inputs and its factory's task metrics (the original's reused from an
    earlier report when given); the calls of each forward on its own inputs (None for a stack)."""
    calls = own_input_calls(original, shrunk, before, after) if shrunk is not None else None
    if calls is not None:
        result.output_gap = output_gap(*calls)
    result.measured_on = measured_on(original)
    reused = reused_metrics(Path(reuse), original) if reuse is not None else None
    result.metrics = task_metrics(original, shrunk, before, after, reused)
    result.metric_rules = metric_rules(original)
    return calls


def _compare_shapes(result: Report, original: Checkpoint, shrunk: Checkpoint) -> None:
    """The shrunk model's summary, its layers beside the original's, and each set's width before and after."""
    result.shrunk = summarize_checkpoint(shrunk)
    result.layers = _layer_changes(result.original, result.shrunk)
    split = () if getattr(original.spec, "split", ()) else getattr(shrunk.spec, "split", ())
    after = {unsplit_name(gs.name, split): gs.size for gs in shrunk.group_sets}  # each layer: its own width
    result.widths = {gs.name: (gs.size, after.get(gs.name, 0)) for gs in original.group_sets}
    result.feature_sets = tuple(gs.name for gs in original.group_sets if gs.kind == "feature")


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def report_markdown(report: Report) -> str:
    """A Markdown table for a pull request or docs/results.md."""
    b, a = report.original, report.shrunk
    rows = ["| | before | after | ratio |", "|---|---:|---:|---:|"]
    for change in report.layers:
        proj = f" (proj {change.proj_before} → {change.proj_after})" if change.proj_before else ""
        rows.append(f"| width {change.label}{proj} | {change.width_before} | {change.width_after} "
                    f"| {change.kept:.0%} kept |")
    if a is not None:
        rows.append(f"| parameters | {b.total_parameters:,} | {a.total_parameters:,} "
                    f"| {b.total_parameters / a.total_parameters:.2f}x |")
        rows.append(f"| multiply-adds / token | {b.total_macs:,} | {a.total_macs:,} | {report.mac_ratio:.2f}x |")
        if b.file_bytes and a.file_bytes:  # a checkpoint in memory has no file yet
            rows.append(f"| file size (bytes) | {b.file_bytes:,} | {a.file_bytes:,} | {b.file_bytes / a.file_bytes:.2f}x |")
    else:
        rows.append(f"| parameters | {b.total_parameters:,} | | |")
        rows.append(f"| multiply-adds / token | {b.total_macs:,} | | |")
    pb, pa = report.perplexity_before, report.perplexity_after
    if pb is not None:
        rows.append(f"| perplexity ({Path(report.data).name}) | {pb.perplexity:.2f} | {_fmt(pa and pa.perplexity)} "
                    f"| Δ {_fmt(report.perplexity_delta, '+.2f')} |")
        if pb.level == "char":
            rows.append(f"| bits per character | {pb.bits_per_token:.3f} | {_fmt(pa and pa.bits_per_token, '.3f')} | |")
    for sample in report.speed:
        where = f"{sample.kernel} kernel" if sample.path == "eager" else sample.path
        rows.append(f"| {sample.unit}/s, {sample.workload} ({where}) | {sample.before_tokens_per_s:,.0f} "
                    f"| {sample.after_tokens_per_s:,.0f} | {sample.speedup:.2f}x (MAC ratio {report.mac_ratio:.2f}x) |")
    if report.int8 is not None:
        q = report.int8
        if b.file_bytes:
            rows.append(f"| int8 (shrunk): size (bytes) | {b.file_bytes:,} | {q.bytes:,} | {b.file_bytes / q.bytes:.2f}x |")
        if q.perplexity is not None and pb is not None:
            rows.append(f"| int8 (shrunk): perplexity | {pb.perplexity:.2f} | {q.perplexity.perplexity:.2f} | "
                        f"Δ {q.perplexity.perplexity - pb.perplexity:+.2f} |")
        for sample in q.speed:
            rows.append(f"| int8 (shrunk): tokens/s, {sample.workload} | {sample.before_tokens_per_s:,.0f} | "
                        f"{sample.after_tokens_per_s:,.0f} | {sample.speedup:.2f}x |")
    for name, (before, after) in report.metrics.items():
        change = f"Δ {after - before:+.4g}" if after is not None else ""
        rows.append(f"| {name} | {before:.4g} | {_fmt(after, '.4g')} | {change} |")
    if report.output_gap is not None:
        gap = report.output_gap
        agreement = f"{gap.agreement:.1%} top-1 agreement" if gap.agreement is not None else ""
        rows.append(f"| output gap on the probe inputs (KL) | | {gap.divergence:.4g} | {agreement} |")
    env = report.environment
    rows += ["", *(f"**Warning:** {text}" for text in report.warnings)] if report.warnings else []
    rows.append("")
    rows.append(f"Measured with torch {env.get('torch')} on {env.get('threads')} CPU thread(s), "
                "before and after interleaved in one process (medians).")
    return "\n".join(rows) + "\n"
