"""The command line: parse, call one library function, render. No logic lives here."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.text import Text

from ..errors import Interrupted, IsscompressError
from ..json_text import finite_json
from . import render as _render
from .console import SafeConsole, printable

app = typer.Typer(
    name="isscompress",
    help="Make trained LSTM models physically smaller with Intrinsic Sparse Structures (ISS).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Exit codes (docs/commands.md): 2 is Typer's own, for a command line it cannot parse.
EXIT_ERROR = 1  # bad input: the message says what to do
EXIT_INTERNAL = 3  # a bug of ours
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM; a training run saved its state first

FamilyOption = typer.Option(None, "--family", help="Model family, when auto-detection is not wanted.")
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables.")
ArchOption = typer.Option(None, "--arch", help="Your own model: FILE.py:FACTORY, where FACTORY() returns "
                          "(model, example_inputs) and the checkpoint holds its state_dict (docs/any-model.md).")
ThreadsOption = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: 1 on machines of up to "
                             "4 CPUs, where more threads collapse under other load; else torch's default). "
                             "Also ISSCOMPRESS_THREADS.")
GroupsOption = typer.Option(None, "--groups", help="Your model's ISS groups as a YAML groups file (docs/any-model.md).")

PIPED_WIDTH = 160  # a table printed into a pipe or file is read whole: Rich's 80 columns would cut its cells ("un…")


def _stdout() -> Console:
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return SafeConsole(width=PIPED_WIDTH if piped else None)


def _stderr() -> Console:
    return SafeConsole(stderr=True)


@contextmanager
def _user_errors(threads: int | None = None, compute: bool = False) -> Iterator[None]:
    """Turn library errors into one paragraph on stderr and exit code 1; Ctrl-C into 130; a bug into 3.
    ``compute``: first set torch's threads (``--threads``, ISSCOMPRESS_THREADS, or the small-machine default)."""
    try:
        if compute:
            from ..threads import apply_threads

            apply_threads(threads)
        yield
    except IsscompressError as err:
        _stderr().print(Text.assemble(("error: ", "bold red"), printable(str(err))), soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED if isinstance(err, Interrupted) else EXIT_ERROR) from None
    except KeyboardInterrupt:
        _stderr().print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as err:  # a bug of ours: still one paragraph, and a distinct exit code
        what = printable(f"{type(err).__name__}: {err}")
        _stderr().print(Text.assemble(("internal error: ", "bold red"), f"{what}. This is a bug in isscompress; please "
                                      "report it with the command and the file's layout. Set ISSCOMPRESS_DEBUG=1 for "
                                      "the traceback."), soft_wrap=True)
        if os.environ.get("ISSCOMPRESS_DEBUG"):
            raise
        raise typer.Exit(EXIT_INTERNAL) from None


def _print_json(data: dict) -> None:
    sys.stdout.write(finite_json(data, indent=2) + "\n")


@app.command()
def inspect(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file (.safetensors, .pt, .pth, .bin)."),
    family: Optional[str] = FamilyOption,
    arch: Optional[str] = ArchOption,
    groups: Optional[Path] = GroupsOption,
    save_groups: Optional[Path] = typer.Option(None, "--save-groups", help="With --arch: write the ISS group sets as "
                                               "a YAML groups file (to review, edit, or pass back with --groups)."),
    as_json: bool = JsonOption,
    force: bool = typer.Option(False, "--force", help="Replace an existing --save-groups file."),
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Show a checkpoint's layers, costs and ISS group norms."""
    from ..verbs.inspect import inspect as inspect_checkpoint

    with _user_errors(threads, compute=True):
        result = inspect_checkpoint(checkpoint, family, arch=arch, groups=groups, save_groups=save_groups, force=force)
    if as_json:
        _print_json(result.to_dict())
    else:
        _render.render_inspection(result, _stdout())


@app.command()
def shrink(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to shrink."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the smaller checkpoint (.safetensors)."),
    threshold: float = typer.Option(0.0, "--threshold", "-t", help="Remove units whose ISS group norm is <= this."),
    family: Optional[str] = FamilyOption,
    arch: Optional[str] = ArchOption,
    groups: Optional[Path] = GroupsOption,
    widths: str = typer.Option("all", "--widths", help="Which widths may narrow: 'all' (recurrent layers, embedding "
                               "dimensions, MLP units) or 'recurrent' (the recurrent layers only)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    as_json: bool = JsonOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Remove dead ISS groups and write a physically smaller, dense checkpoint."""
    from ..verbs.shrink import shrink as shrink_checkpoint

    with _user_errors(threads, compute=True):
        result = shrink_checkpoint(checkpoint, output, threshold, family=family, force=force, arch=arch, groups=groups,
                                   widths=widths)
    if as_json:
        _print_json(result.to_dict())
    else:
        _render.render_shrink(result, _stdout())


RecipeOption = typer.Option(..., "--recipe", "-r", help="Recipe YAML file (see docs/recipe.md).")


@app.command()
def finetune(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to fine-tune."),
    recipe: Path = RecipeOption,
    output: Path = typer.Option(..., "--output", "-o", help="Fine-tuned checkpoint to write (.safetensors)."),
    stage: str = typer.Option("finetune", help="'finetune' (with the recipe's iss section) or 'recover' "
                                               "(the recipe's recover schedule, no ISS)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT's last save."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    arch: Optional[str] = ArchOption,
    groups: Optional[Path] = GroupsOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Fine-tune with ISS group Lasso (or recover without it) from a recipe."""
    from ..verbs.finetune import finetune as run_finetune

    with _user_errors(threads, compute=True):
        with _render.TrainingProgress(_stderr()) as progress:
            progress.set_stage(stage if not arch else f"label-free {stage}")
            result = run_finetune(checkpoint, recipe, output, stage=stage, resume=resume, force=force,
                                  on_event=progress, arch=arch, groups=groups)
    _stderr().print(f"wrote {result.output}" if result.written else
                    f"nothing to write: the run in {result.output} had already finished (nothing left to resume)")


@app.command("run")
def run_all(
    checkpoint: Path = typer.Argument(..., help="Trained checkpoint to compress."),
    recipe: Path = RecipeOption,
    output: Path = typer.Option(..., "--output", "-o", help="Folder for every output of the run."),
    force: bool = typer.Option(False, "--force", help="Overwrite outputs in the folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in the folder."),
    repeats: int = typer.Option(5, help="Speed measurement repetitions."),
    arch: Optional[str] = ArchOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """The whole recipe: fine-tune with ISS, shrink, recover, report."""
    from ..verbs.run import run as run_recipe

    with _user_errors(threads, compute=True):
        with _render.TrainingProgress(_stderr()) as progress:
            result = run_recipe(checkpoint, recipe, output, force=force, resume=resume, speed_repeats=repeats,
                                on_event=progress, on_stage=progress.set_stage, arch=arch)
    _render.render_shrink(result.shrink, _stderr())
    _render.render_report(result.report, _stdout())
    _stdout().print(f"Outputs in {result.folder}: {result.final.name}, report.json, report.md")


@app.command("eval")
def evaluate(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to evaluate."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Text file, one sentence per line (a language "
                                                                   "model; not with --arch)."),
    vocab: str = typer.Option("auto", help="'auto', 'corpus' or a vocabulary file."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="Take vocabulary and batching from here."),
    char: bool = typer.Option(False, "--char", help="A character-level model: every character is a token; "
                                                    "reports bits per character."),
    family: Optional[str] = FamilyOption,
    arch: Optional[str] = ArchOption,
    as_json: bool = JsonOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Perplexity of a checkpoint on a text file (word_language_model's measurement), or bits per character; with
    --arch, a user model's own metrics (its factory's evaluate)."""
    from rich.progress import Progress

    from ..recipe import load_recipe
    from ..verbs.evaluate import evaluate as evaluate_checkpoint
    from ..verbs.evaluate import evaluate_task

    if arch is not None:
        with _user_errors(threads, compute=True):
            metrics = evaluate_task(checkpoint, arch)
        if as_json:
            _print_json({"checkpoint": str(checkpoint), "metrics": metrics})
        else:
            _render.render_metrics(str(checkpoint), metrics, _stdout())
        return
    with _user_errors(threads, compute=True):
        if data is None:
            raise IsscompressError("eval needs --data (a text file) to measure a language model's perplexity.",
                                   "Give --data FILE, or --arch FILE.py:FACTORY for a model of your own.")
        loaded = load_recipe(recipe) if recipe else None
        with Progress(console=_stderr(), transient=True) as bar:
            task = bar.add_task("evaluating", total=None)
            result = evaluate_checkpoint(checkpoint, data, vocab=vocab, recipe=loaded, family=family,
                                         level="char" if char else None,
                                         on_window=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        _print_json({"checkpoint": str(checkpoint), "data": str(data), **result.to_dict()})
    else:
        _render.render_perplexity(str(checkpoint), result, _stdout())


@app.command()
def report(
    original: Path = typer.Argument(..., help="The original checkpoint."),
    shrunk: Optional[Path] = typer.Argument(None, help="Its shrunk (and recovered) version."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Text to measure perplexity on."),
    vocab: str = typer.Option("auto", help="'auto', 'corpus' or a vocabulary file."),
    as_json: bool = JsonOption,
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write PNG plots into this folder."),
    repeats: int = typer.Option(5, help="Speed measurement repetitions."),
    no_speed: bool = typer.Option(False, "--no-speed", help="Skip the speed measurement."),
    family: Optional[str] = FamilyOption,
    arch: Optional[str] = ArchOption,
    int8: bool = typer.Option(False, "--int8", help="Also the shrunk model quantised to int8: size, perplexity, "
                              "speed against the original."),
    speed_path: str = typer.Option("auto", "--speed-path", help="Runtime to time: eager, torchscript, onnxruntime, "
                                   "or auto (the fastest measured: ONNX Runtime when installed and the model fits "
                                   "ONNX, else eager)."),
    speed_on: str = typer.Option("example", "--speed-on", help="Time a user model (--arch) on its 'example' inputs "
                                 "or its factory's first 'batches'."),
    reuse: Optional[Path] = typer.Option(None, "--reuse", help="An earlier report --json of the same original and "
                                         "--arch file: its task metrics of the original, not measured again."),
    threads: Optional[int] = ThreadsOption,
) -> None:
    """What compression bought: widths, parameters, multiply-adds, size, perplexity and measured speed."""
    from ..verbs.report import report as build_report
    from ..verbs.report import report_markdown

    with _user_errors(threads, compute=True):
        result = build_report(original, shrunk, data=data, vocab=vocab, speed=not no_speed, repeats=repeats,
                              family=family, int8=int8, speed_path=speed_path, arch=arch, speed_on=speed_on,
                              reuse=reuse)
        if plot is not None:
            from .plots import write_plots

            given = (original, shrunk, data, None if vocab in ("auto", "corpus") else Path(vocab))
            for path in write_plots(result, plot, inputs=tuple(p for p in given if p is not None)):
                _stderr().print(f"wrote {path}")
    if as_json:
        _print_json(result.to_dict())
    elif markdown:
        sys.stdout.write(report_markdown(result))
    else:
        _render.render_report(result, _stdout())


@app.command()
def train(
    recipe: Path = RecipeOption,
    output: Path = typer.Option(..., "--output", "-o", help="Checkpoint to write (.safetensors)."),
    widths: list[int] = typer.Option(..., "--width", "-w", help="Hidden width of each layer (repeat per layer)."),
    embedding: int = typer.Option(..., "--embedding", "-e", help="Embedding size."),
    cell: str = typer.Option("LSTM", help="LSTM, GRU, RNN_TANH, RNN_RELU or RHN."),
    depth: int = typer.Option(1, "--depth", help="Recurrence depth (micro-layers per step) of an RHN."),
    tied: bool = typer.Option(False, "--tied", help="Tie the decoder to the embedding (embedding = last width)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Train a new language model from scratch (a baseline, or the direct design of given widths)."""
    from ..architectures.stack import ModelSpec
    from ..verbs.finetune import train as train_new

    with _user_errors(threads, compute=True):
        spec = ModelSpec.language_model(cell, widths, embedding, tied=tied, depth=depth)
        with _render.TrainingProgress(_stderr()) as progress:
            progress.set_stage("train")
            result = train_new(spec, recipe, output, force=force, on_event=progress)
    _stderr().print(f"wrote {result.output}")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="Checkpoint to export (usually a shrunk one)."),
    fmt: str = typer.Option(..., "--format", "-f", help="torchscript or onnx."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write (.pt for TorchScript, .onnx)."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: dynamic int8 LSTM/GRU/Linear layers and "
                                           "an int8 embedding (TorchScript: PyTorch; ONNX: ONNX Runtime's quantiser)."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="With --quantize: text whose perplexity float32 "
                                        "and int8 must agree on."),
    max_increase: float = typer.Option(1.0, "--max-increase", help="With --quantize and --data: the largest "
                                       "perplexity increase allowed, in percent."),
    arch: Optional[str] = ArchOption,
    threads: Optional[int] = ThreadsOption,
) -> None:
    """Export a model that runs without isscompress; checked against PyTorch before writing."""
    from ..verbs.export import export as export_model

    with _user_errors(threads, compute=True):
        result = export_model(checkpoint, output, fmt, force=force, quantize=quantize, data=data,
                              max_increase=max_increase, arch=arch)
    _stdout().print(f"wrote {result.output} ({result.format}{', ' + result.quantize if result.quantize else ''}); "
                    f"max |difference| on a probe batch {result.max_abs_diff:.2g}\ninputs: {', '.join(result.inputs)}"
                    f"\noutputs: {', '.join(result.outputs)}")
    if result.quantize:
        quality = (f"perplexity float32 {result.perplexity[0]:.2f} -> int8 {result.perplexity[1]:.2f}"
                   if result.perplexity else "no --data: perplexity not measured")
        _stdout().print(f"int8 against float32: KL on a probe batch {result.probe_kl:.3g}; {quality}; "
                        f"{len(result.data) / 1e6:.2f} MB")
