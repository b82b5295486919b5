"""JSON read from a file a user (or anyone) could have edited: one error naming where, never a crash.

Python's parser raises RecursionError on a few thousand nested brackets and ValueError on an integer of too many
digits; both are a malformed file to the user, so they are reported like any syntax error, by the caller's error
class (a checkpoint's metadata is a CheckpointError, a vocabulary a DataError).
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import IsscompressError


def parse_json(text: str | bytes, where: str, error: type[IsscompressError], hint: str) -> Any:
    """``json.loads(text)``, with every way it can fail turned into ``error`` naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{where} is not valid JSON ({err.msg}, line {err.lineno}).", hint) from None
    except RecursionError:
        raise error(f"{where} nests its JSON too deeply to be read.", hint) from None
    except (UnicodeDecodeError, ValueError) as err:
        raise error(f"{where} is not valid JSON ({type(err).__name__}: {str(err)[:120]}).", hint) from None


def finite_json(value: Any, **options: Any) -> str:
    """``json.dumps`` that writes valid JSON: a NaN or infinite number (a diverged metric) becomes ``null``, since
    JSON has no such numbers and Python's ``NaN``/``Infinity`` break every strict reader."""

    def finite(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: finite(inner) for key, inner in item.items()}
        if isinstance(item, (list, tuple)):
            return [finite(inner) for inner in item]
        return item

    return json.dumps(finite(value), allow_nan=False, **options)
