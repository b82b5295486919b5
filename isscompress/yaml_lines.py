"""YAML read the careful way, for every file a user writes by hand (recipes, groups files): anchors and aliases
refused before anything is built, duplicate keys refused, and the line of every key kept, so that a schema error
names the line it is about."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import IsscompressError


def refuse_aliases(text: str, source: str, error: type[IsscompressError]) -> None:
    """A few lines of nested aliases expand exponentially ("billion laughs"); no file of ours needs them."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise error(f"{source}, line {event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) are "
                            "not accepted here.", "Write the values out.")
    except yaml.YAMLError:
        return  # compose reports the syntax error with its line


def compose(text: str, source: str, error: type[IsscompressError]) -> yaml.Node | None:
    """The node tree of ``text`` (aliases refused first); a syntax error names its line."""
    refuse_aliases(text, source, error)
    try:
        return yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise error(f"{source}{line}: not valid YAML ({getattr(err, 'problem', err)}).",
                    "Fix the YAML syntax (indentation, colons, quotes).") from None


def key_lines(node: yaml.Node, path: tuple = (), error: type[IsscompressError] = IsscompressError) -> dict[tuple, int]:
    """Line (1-based) of every key and value in the YAML tree, by location; a key given twice is refused."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise error(f"line {key_node.start_mark.line + 1}: key '{key}' appears twice.", "Keep one of them.")
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            lines.update({k: v for k, v in key_lines(value_node, path + (key,), error).items() if k != path + (key,)})
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(key_lines(item, path + (index,), error))
    return lines


def line_of(location: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of ``location``, or of the nearest enclosing key that has one."""
    return next((lines[location[:n]] for n in range(len(location), -1, -1) if location[:n] in lines), None)


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message echoes it: at most ``limit`` characters."""
    text = repr(value)
    length = len(value) if isinstance(value, str) else len(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({length:,} characters)"
