"""The one table of what isscompress computes, which every reader checks a file's declared settings against.

A state dict cannot say which gate activation, peepholes, direction or reset-gate placement produced it; metadata
that frameworks record can (a safetensors header, a pickled module's attributes, a Keras layer config). When a
setting names anything but what the cell isscompress builds computes, the model would be shrunk and exported as a
different function with every parity check passing (the checks compare isscompress with itself), so it is refused,
naming the setting. Per-cell expectations (a relu RNN's activation, a GRU's reset-after) live in the cell table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..layers.cells import CELLS
from ..errors import CheckpointError

FALSY = frozenset({"", "0", "0.0", "false", "none", "null", "no", "off"})
TRUTHY = frozenset({"1", "1.0", "true", "yes", "on"})
# setting (as Keras / TensorFlow / ONNX / others record it) -> values that mean PyTorch's own equations
EXPECTED: dict[str, frozenset[str]] = {
    "recurrent_activation": frozenset({"sigmoid"}),
    "gate_activation": frozenset({"sigmoid"}),
    "inner_activation": frozenset({"sigmoid"}),  # Keras 1
    "activation": frozenset({"tanh"}),
    "use_peepholes": FALSY, "peepholes": FALSY, "peephole": FALSY,
    "layer_norm": FALSY, "use_layer_norm": FALSY, "layer_normalization": FALSY,
    "forget_bias": FALSY,  # TensorFlow adds it at run time; PyTorch keeps it in the bias
    "cell_clip": FALSY, "proj_clip": FALSY,
    "go_backwards": FALSY,  # a layer that reads its sequence reversed (a Bidirectional's backward half is its own case)
    "time_major": FALSY,  # isscompress's own layout is time-major, but a Keras layer's weights say batch-major
    "mask_zero": FALSY,  # Keras carries the state over masked steps; PyTorch's cells step every position
}
SHORTHAND = {"on": TRUTHY, "off": FALSY}
# a reader's attribute naming the cell kind it found (a Keras layer's gates); not a Python attribute name, so a
# pickled module's own attributes never collide with it
CELL_KIND = "cell kind"


def expected_settings(cell: str) -> dict[str, frozenset[str]]:
    """The table for one cell kind: the common settings, with the cell table's own over them."""
    table = dict(EXPECTED)
    for key, value in CELLS[cell].settings if cell in CELLS else ():
        table[key] = SHORTHAND.get(value, frozenset({value}))
    return table


def refuse_setting(subject: str, key: str, value: Any, cell: str, allowed: frozenset[str],
                   keyword: bool = False) -> CheckpointError:
    shown = repr(value[:40]) if isinstance(value, str) else str(value)[:40]
    expected = "off" if allowed is FALSY else "on" if allowed is TRUTHY else " or ".join(sorted(allowed))
    equations = CELLS[cell].equations if cell in CELLS else cell
    return CheckpointError(
        f"{subject} {key}{'=' if keyword else ' = '}{shown}, but the {cell} cell isscompress would build has {key} {expected} "
        f"({equations}). Shrinking it would compute a different function.",
        "Convert the model to PyTorch's cell equations first; if the entry is wrong, remove it from the file.")


def check_settings(settings: Mapping[str, Any], cell: str, subject: str, keyword: bool = False) -> None:
    """Raise CheckpointError if ``settings`` declare anything but ``cell``'s equations (``subject`` says whose;
    ``keyword`` shows a setting as the keyword argument a layer was built with)."""
    table = expected_settings(cell)
    for key, value in settings.items():
        allowed = table.get(str(key).lower())
        if allowed is not None and str(value).strip().lower() not in allowed:
            raise refuse_setting(subject, key, value, cell, allowed, keyword)


def declared_cell(settings: Mapping[str, Any], base: str, subject: str, keyword: bool = False) -> str:
    """The kind ``settings`` declare among ``base`` and the table's variants of it (a Keras 2 LSTM with hard-sigmoid
    gates); when none computes what they say, ``base``'s refusal names the setting."""
    for cell in (base, *(name for name, kind in CELLS.items() if kind.variant_of == base)):
        try:
            check_settings(settings, cell, subject, keyword)
            return cell
        except CheckpointError:
            continue
    check_settings(settings, base, subject, keyword)
    return base


def check_equations(metadata: Mapping[str, Any], cell: str, where: Path) -> None:
    """A file's header or a pickle's attributes, checked against the table."""
    check_settings(metadata, cell, f"{where}: its metadata says")
