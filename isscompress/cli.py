"""The command line: parse, call one library function, render. No logic lives here."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.text import Text

from . import _render
from .errors import IsscompressError

app = typer.Typer(
    name="isscompress",
    help="Make trained LSTM models physically smaller with Intrinsic Sparse Structures (ISS).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

FamilyOption = typer.Option(None, "--family", help="Model family, when auto-detection is not wanted.")
JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout instead of tables.")


def _stdout() -> Console:
    return Console()


def _stderr() -> Console:
    return Console(stderr=True)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn library errors into one paragraph on stderr and exit code 1; Ctrl-C into 130."""
    try:
        yield
    except IsscompressError as err:
        _stderr().print(Text.assemble(("error: ", "bold red"), str(err)), soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _stderr().print("interrupted")
        raise typer.Exit(130) from None


def _print_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def inspect(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file (.safetensors, .pt, .pth, .bin)."),
    family: Optional[str] = FamilyOption,
    as_json: bool = JsonOption,
) -> None:
    """Show a checkpoint's layers, costs and ISS group norms."""
    from .inspection import inspect_checkpoint

    with _user_errors():
        result = inspect_checkpoint(checkpoint, family)
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
    force: bool = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists."),
    as_json: bool = JsonOption,
) -> None:
    """Remove dead ISS groups and write a physically smaller, dense checkpoint."""
    from .shrinking import shrink as shrink_checkpoint

    with _user_errors():
        result = shrink_checkpoint(checkpoint, output, threshold, family=family, force=force)
    if as_json:
        _print_json(result.to_dict())
    else:
        _render.render_shrink(result, _stdout())
