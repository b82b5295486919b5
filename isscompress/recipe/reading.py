"""Reading a recipe: YAML text -> a checked :class:`Recipe`, every error naming the file, the line and the key (and
the closest valid key); relative paths resolved against the recipe's folder; ``data.split`` made into parts."""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from ..cache import private_folder, write_private
from ..core.groups import GroupSet, chosen_sets
from ..data import file_problem
from ..errors import RecipeError
from ..yaml_lines import MAX_BYTES, compose, construct, key_lines, line_of, shown
from .sections import SECTIONS, Recipe


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _describe(error: dict, lines: dict[tuple, int]) -> str:
    loc = tuple(error["loc"])
    line = line_of(loc, lines)
    where = f"line {line}: " if line else ""
    key = loc[-1] if loc else ""
    section = loc[0] if loc else ""
    if error["type"] == "extra_forbidden":
        model = SECTIONS.get(section) if len(loc) == 2 else Recipe if len(loc) == 1 else None
        valid = _valid_keys(model) if model else []
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        place = f"in section '{section}'" if len(loc) == 2 else "at the top level"
        return f"{where}unknown key '{key}' {place}.{hint} Valid keys: {', '.join(valid)}."
    dotted = ".".join(str(part) for part in loc)
    return f"{where}'{dotted}': {error['msg']} (got {shown(error.get('input'))})."


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate recipe text; every problem is a RecipeError naming the source and line."""
    root = compose(text, f"recipe {source}", RecipeError)
    if root is None:
        raise RecipeError(f"recipe {source} is empty.", f"Write at least one section: {', '.join(SECTIONS)}.")
    if not isinstance(root, yaml.MappingNode):
        raise RecipeError(f"recipe {source}: the top level must be a mapping of sections, not a list or a value.",
                          f"Sections: {', '.join(SECTIONS)}.")
    try:
        lines = key_lines(root, error=RecipeError)
    except RecipeError as err:
        raise RecipeError(f"recipe {source}, {err.message}", err.hint) from None
    data: Any = construct(root)
    for name, value in data.items():
        if value is None and name in SECTIONS:
            raise RecipeError(f"recipe {source}, line {lines[(name,)]}: section '{name}' is empty.",
                              "Remove it, or give it keys.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e, lines) for e in err.errors()]
        raise RecipeError(f"recipe {source}, " + " ".join(problems[:5]),
                          "See docs/recipe.md for every key.") from None


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read, validate and resolve a recipe file: data paths become relative to the recipe and must exist."""
    path = Path(path)
    if (problem := file_problem(path)) is not None:
        raise RecipeError(f"recipe {path} {problem}.", "Check the --recipe path.")
    if path.stat().st_size > MAX_BYTES:  # before reading: YAML of that size would take gigabytes to parse
        raise RecipeError(f"recipe {path} is {path.stat().st_size:,} bytes; a recipe is a few kilobytes (at most "
                          f"{MAX_BYTES:,} are read).", "Check the --recipe path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not UTF-8 text.", "Save it as UTF-8.") from None
    recipe = parse_recipe(text, str(path))
    return resolve_paths(recipe, path.parent, str(path), text)


def resolve_paths(recipe: Recipe, base: Path, source: str, text: str = "") -> Recipe:
    """Data paths relative to ``base``; each must exist."""
    lines = key_lines(compose(text, f"recipe {source}", RecipeError), error=RecipeError) if text else {}
    updates: dict[str, Any] = {}
    if recipe.data.split is not None:
        recipe = _with_split(recipe, base, source, lines)
    for key in ("train", "valid", "test"):
        value = getattr(recipe.data, key)
        if value is None:
            continue
        resolved = value if value.is_absolute() else base / value
        if (problem := file_problem(resolved)) is not None:
            line = lines.get(("data", key))
            at = f", line {line}" if line else ""
            raise RecipeError(f"recipe {source}{at}: data.{key} file {resolved} {problem}.",
                              "Paths are relative to the recipe's folder.")
        updates[key] = resolved
    vocab = recipe.data.vocab
    if vocab not in ("auto", "corpus"):
        resolved = Path(vocab) if Path(vocab).is_absolute() else base / vocab
        if (problem := file_problem(resolved)) is not None:
            raise RecipeError(f"recipe {source}: data.vocab file {resolved} {problem}.",
                              "Use 'auto', 'corpus', or the path of a vocabulary file (one word per line).")
        updates["vocab"] = str(resolved)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update=updates)})
    distill = recipe.distill
    if distill is not None and distill.teacher != "source":
        teacher = Path(distill.teacher) if Path(distill.teacher).is_absolute() else base / distill.teacher
        if (problem := file_problem(teacher)) is not None:
            line = lines.get(("distill", "teacher"))
            raise RecipeError(f"recipe {source}{f', line {line}' if line else ''}: distill.teacher file {teacher} "
                              f"{problem}.", "Paths are relative to the recipe's folder; or write 'source'.")
        recipe = recipe.model_copy(update={"distill": distill.model_copy(update={"teacher": str(teacher)})})
    return recipe


def _with_split(recipe: Recipe, base: Path, source: str, lines: dict) -> Recipe:
    """data.split: cut the file once into train/valid/test files in a cache folder named by its content."""
    data = recipe.data
    at = f", line {lines[('data', 'split')]}" if ("data", "split") in lines else ""
    if any(getattr(data, key) is not None for key in ("train", "valid", "test")):
        raise RecipeError(f"recipe {source}{at}: data.split and data.train/valid/test are both given.",
                          "Give one text file to split, or the three files.")
    first, second = data.split_fractions
    if not (0 < first and 0 < second and first + second < 1):
        raise RecipeError(f"recipe {source}: data.split_fractions {list(data.split_fractions)} must be two positive "
                          "fractions that add up to less than 1.", "For example [0.9, 0.05].")
    path = data.split if data.split.is_absolute() else base / data.split
    if (problem := file_problem(path)) is not None:
        raise RecipeError(f"recipe {source}{at}: data.split file {path} {problem}.",
                          "Paths are relative to the recipe's folder.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {source}{at}: data.split file {path} is not UTF-8 text.",
                          "Convert it to UTF-8, e.g. with iconv.") from None
    cuts = [text.find("\n", int(len(text) * f)) + 1 or len(text) for f in (first, first + second)]
    parts = (text[:cuts[0]], text[cuts[0]:cuts[1]], text[cuts[1]:])
    if not all(parts):
        raise RecipeError(f"recipe {source}{at}: data.split file {path} is too short to split into three parts.",
                          "Use a longer text, or give train/valid/test files.")
    digest = hashlib.sha256(text.encode("utf-8") + f"{first},{second}".encode()).hexdigest()[:16]
    folder = private_folder("splits", digest)
    names = ("train.txt", "valid.txt", "test.txt")
    for name, part in zip(names, parts):  # a cached part is used only when it is exactly this text's part
        cached = folder / name
        if cached.is_symlink() or not cached.is_file() or cached.read_text(encoding="utf-8", errors="replace") != part:
            cached.unlink(missing_ok=True)
            write_private(folder, name, part)
    split = {key: folder / name for key, name in zip(("train", "valid", "test"), names)}
    return recipe.model_copy(update={"data": data.model_copy(update={**split, "split": None})})


def check_layer_names(recipe: Recipe, sets: Sequence[GroupSet], source: str) -> None:
    """Per-layer multipliers and targets must name group sets the model has, which ``iss.widths`` lets ISS act on;
    targets must shrink them."""
    if recipe.iss is None:
        return
    source = f" {source}" if source else ""
    set_sizes = {gs.name: gs.size for gs in chosen_sets(sets, recipe.iss.widths)}
    left_alone = {gs.name for gs in sets} - set_sizes.keys()
    for field_name in ("layer_multipliers", "target_widths"):
        named = getattr(recipe.iss, field_name)
        if left_alone & named.keys():
            raise RecipeError(f"recipe{source}: iss.{field_name} names {', '.join(sorted(left_alone & named.keys()))}, "
                              f"a width that is not a recurrent layer's, but iss.widths is "
                              f"{recipe.iss.widths!r}.", "Add `widths: all` to the iss section to shrink every width.")
        unknown = [name for name in named if name not in set_sizes]
        if unknown:
            close = {n: difflib.get_close_matches(n, list(set_sizes), n=1) for n in unknown}
            hints = "; ".join(f"'{n}'" + (f" (did you mean '{c[0]}'?)" if c else "") for n, c in close.items())
            raise RecipeError(f"recipe{source}: iss.{field_name} names group sets this model does not have: "
                              f"{hints}.", f"This model's group sets: {', '.join(set_sizes)}.")
    for name, target in recipe.iss.target_widths.items():
        if target >= set_sizes[name]:
            raise RecipeError(f"recipe{source}: iss.target_widths.{name} is {target}, but {name} has only "
                              f"{set_sizes[name]} units, so it would not shrink.",
                              f"Give a target below {set_sizes[name]}, or leave {name} out.")
