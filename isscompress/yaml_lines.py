"""YAML read the careful way, for every file a user writes by hand (recipes, groups files): anchors and aliases
refused before anything is built, duplicate keys refused, and the line of every key kept, so that a schema error
names the line it is about."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import IsscompressError


MAX_BYTES = 1 * 2**20  # a recipe or groups file is a few kilobytes; YAML takes ~1 KB of memory per byte parsed
MAX_EVENTS = 100_000  # nodes, keys and values together: bounds the tree before it is built
MAX_DEPTH = 64
TAG_HINT = "Write the values out as plain YAML (no !!tags, anchors, aliases, merge keys or complex keys)."


def _check_events(text: str, source: str, error: type[IsscompressError]) -> None:
    """Walk the parser's events before anything is built: too many or too deep is refused, and so are the YAML
    features no file of ours needs — anchors and aliases (a few lines of nested aliases expand exponentially,
    "billion laughs") and explicit tags (``!!set``, ``!!binary``, ``!!python/...``: types the schema never asks for)."""
    depth = 0
    try:
        for count, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader)):
            line = event.start_mark.line + 1
            if count > MAX_EVENTS:
                raise error(f"{source}: more than {MAX_EVENTS:,} YAML values, far more than a file of this kind holds "
                            f"(stopped reading at line {line}).", "Point to the right file.")
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise error(f"{source}, line {line}: YAML anchors and aliases (&name, *name) are not accepted here.",
                            TAG_HINT)
            tag, implicit = getattr(event, "tag", None), getattr(event, "implicit", True)
            if tag is not None and tag != "!" and not (implicit is True or (isinstance(implicit, tuple) and any(
                    implicit))):
                raise error(f"{source}, line {line}: the YAML tag {shown(tag)} is not accepted here.", TAG_HINT)
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > MAX_DEPTH:
                raise error(f"{source}, line {line}: values nested more than {MAX_DEPTH} deep.", "Point to the right "
                            "file; recipes and groups files nest a few levels.")
    except yaml.YAMLError:
        return  # compose reports the syntax error with its line


def compose(text: str, source: str, error: type[IsscompressError]) -> yaml.Node | None:
    """The node tree of ``text`` (size, values, depth, aliases and tags checked first); a syntax error names its
    line."""
    if len(text) > MAX_BYTES:
        raise error(f"{source} is {len(text):,} characters; a file of this kind is a few kilobytes (at most "
                    f"{MAX_BYTES:,} are read).", "Point to the right file.")
    _check_events(text, source, error)
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise error(f"{source}{line}: not valid YAML ({getattr(err, 'problem', err)}).",
                    "Fix the YAML syntax (indentation, colons, quotes).") from None


def construct(node: yaml.Node) -> Any:
    """Python values of a node tree :func:`compose` checked (the text is not parsed a second time)."""
    return yaml.SafeLoader("").construct_document(node)


def key_lines(node: yaml.Node, path: tuple = (), error: type[IsscompressError] = IsscompressError) -> dict[tuple, int]:
    """Line (1-based) of every key and value in the YAML tree, by location; a key given twice is refused."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise error(f"line {key_node.start_mark.line + 1}: a key that is a list or a mapping (a YAML complex "
                            "key).", TAG_HINT)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise error(f"line {key_node.start_mark.line + 1}: a YAML merge key (<<) is not accepted here; it "
                            "would bring in keys the duplicate-key check cannot see.", TAG_HINT)
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
