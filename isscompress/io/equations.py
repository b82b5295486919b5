"""Refuse a checkpoint whose own metadata says its cells compute something PyTorch's cells do not.

A state dict cannot say which gate activation, peepholes or forget-bias convention produced it; metadata
that frameworks record can. When it names anything but the equations of the cell isscompress would build,
the model would be shrunk and exported as a different function with every parity check passing (the checks
compare isscompress with itself), so it is refused, naming the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import CheckpointError

FALSY = {"", "0", "0.0", "false", "none", "null", "no"}
# setting (as Keras / TensorFlow / others record it) -> values that mean PyTorch's own equations
EXPECTED: dict[str, set[str]] = {
    "recurrent_activation": {"sigmoid"},
    "gate_activation": {"sigmoid"},
    "inner_activation": {"sigmoid"},  # Keras 1
    "activation": {"tanh"},
    "use_peepholes": FALSY, "peepholes": FALSY, "peephole": FALSY,
    "layer_norm": FALSY, "use_layer_norm": FALSY, "layer_normalization": FALSY,
    "forget_bias": FALSY,  # TensorFlow adds it at run time; PyTorch keeps it in the bias
    "cell_clip": FALSY, "proj_clip": FALSY,
}
RELU_CELLS = {"RNN_RELU"}  # whose activation is relu


def check_equations(metadata: Mapping[str, Any], cell: str, equations: str, where: Path) -> None:
    """Raise CheckpointError if ``metadata`` (a file's header or a pickle's attributes) declares other equations."""
    for key, value in metadata.items():
        allowed = EXPECTED.get(key.lower())
        if allowed is None:
            continue
        if key.lower() == "activation" and cell in RELU_CELLS:
            allowed = {"relu"}
        shown = str(value).strip().lower()
        if shown not in allowed:
            expected = "off" if allowed is FALSY else " or ".join(sorted(allowed))
            raise CheckpointError(
                f"{where}: its metadata says {key} = {str(value)[:40]!r}, but the {cell} cell isscompress would build "
                f"has {key} {expected} ({equations}). Shrinking it would compute a different function.",
                "Convert the model to PyTorch's cell equations first; if the entry is wrong, remove it from the file.")
