"""The YAML groups file (``Plan.save`` writes it; a user may edit it or write one for a model tracing cannot
follow), read with the recipe's care: aliases refused, a typed schema that refuses unknown keys and names the line,
duplicate sets refused, and every member range-checked against the tensors it names."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError
from torch import Tensor

from ..core.groups import GroupSet, Member
from ..errors import IsscompressError
from ..yaml_lines import MAX_BYTES, compose, construct, key_lines, line_of, shown

GROUPS_FORMAT = "isscompress-groups/1"
HINT = "Write one with isscompress.Plan.save (or inspect --arch ... --save-groups) and edit it."


class GroupsFileError(IsscompressError):
    """A YAML groups file is invalid or does not fit the model."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MemberEntry(_Entry):
    key: str = Field(min_length=1)
    axis: NonNegativeInt
    starts: list[NonNegativeInt] = Field(min_length=1)


class SetEntry(_Entry):
    name: str = Field(min_length=1)
    size: PositiveInt = Field(le=2**24)
    members: list[MemberEntry] = Field(min_length=1)
    same_width_as: Optional[str] = None
    narrower_than: Optional[str] = None
    kind: Literal["recurrent", "feature"] = "recurrent"  # feature: an embedding dimension, a Linear's output unit
    carried: list[MemberEntry] = Field(default_factory=list)  # cut with the units, in no norm (running statistics)


class GroupsFile(_Entry):
    format: Literal["isscompress-groups/1"]
    sets: list[SetEntry] = Field(min_length=1)


def _describe(error: dict, lines: dict[tuple, int]) -> str:
    location = tuple(error["loc"])
    line = line_of(location, lines)
    where = f"line {line}: " if line else ""
    dotted = ".".join(str(part) for part in location) or "the top level"
    if error["type"] == "extra_forbidden":
        model = MemberEntry if "members" in location else SetEntry if "sets" in location else GroupsFile
        valid = list(model.model_fields)
        close = difflib.get_close_matches(str(location[-1]), valid, n=1)
        suggestion = f" Did you mean '{close[0]}'?" if close else ""
        return f"{where}unknown key '{dotted}'.{suggestion} Valid keys there: {', '.join(valid)}."
    return f"{where}'{dotted}': {error['msg']} (got {shown(error.get('input'))})."


def _check_distinct(sets: list[SetEntry], where: str, lines: dict[tuple, int]) -> None:
    """Two sets of one name, or a weight position claimed twice, make which group a weight is in ambiguous."""
    first: dict[str, int] = {}
    spans: dict[tuple[str, int], list[tuple[int, int, str]]] = {}
    for index, entry in enumerate(sets):
        if entry.name in first:
            raise GroupsFileError(f"{where}, line {lines.get(('sets', index), '?')}: set '{entry.name}' is defined "
                                  f"twice (sets #{first[entry.name] + 1} and #{index + 1}).", "Keep one, or rename one.")
        first[entry.name] = index
        for member in entry.members:
            spans.setdefault((member.key, member.axis), []).extend(
                (start, start + entry.size, entry.name) for start in member.starts)
    for (key, axis), found in spans.items():
        found.sort()
        for (start, end, owner), (next_start, _, other) in zip(found, found[1:]):
            if next_start < end:
                raise GroupsFileError(f"{where}: positions {next_start}..{end - 1} of '{key}' on axis {axis} belong to "
                                      f"set '{owner}' and again to set '{other}'.",
                                      "Each weight position belongs to one unit's group; remove the duplicate.")


def _check_width_rules(sets: list[SetEntry], where: str, lines: dict[tuple, int]) -> None:
    """``narrower_than`` names the width of other sets with more units. Sizes falling strictly along every rule is
    also what rules out a circle (A narrower than B narrower than A), which no widths could satisfy."""
    keys = {entry.same_width_as or entry.name: entry for entry in sets}
    for index, entry in enumerate(sets):
        key, wider = entry.same_width_as or entry.name, entry.narrower_than
        if not wider:
            continue
        at = f"{where}, line {lines.get(('sets', index, 'narrower_than'), '?')}"
        if wider not in keys:
            raise GroupsFileError(f"{at}: set '{entry.name}' is narrower_than '{wider}', which is no set's name or "
                                  "same_width_as key.", f"Name one of: {', '.join(keys)}.")
        if wider == key:
            raise GroupsFileError(f"{at}: set '{entry.name}' is narrower_than its own width '{wider}'.",
                                  "Remove narrower_than, or name the wider set.")
        if entry.size >= keys[wider].size:
            raise GroupsFileError(f"{at}: set '{entry.name}' ({entry.size} units) is narrower_than '{wider}', which "
                                  f"has {keys[wider].size}.", "A narrower set has fewer units than the wider one.")


def parse_groups(text: str, where: str) -> tuple[GroupSet, ...]:
    """Group sets from groups-file text; every problem a GroupsFileError naming the line."""
    root = compose(text, where, GroupsFileError)
    if root is None:
        raise GroupsFileError(f"{where} is empty.", HINT)
    lines = key_lines(root, error=GroupsFileError)
    raw = construct(root)
    if not isinstance(raw, dict) or raw.get("format") != GROUPS_FORMAT:
        raise GroupsFileError(f"{where} is not an isscompress groups file (it needs `format: {GROUPS_FORMAT}` and a "
                              "`sets` list).", HINT)
    try:
        data = GroupsFile.model_validate(raw)
    except ValidationError as err:
        problems = [_describe(e, lines) for e in err.errors()]
        raise GroupsFileError(f"{where}: " + " ".join(problems[:4]), HINT) from None
    _check_distinct(data.sets, where, lines)
    _check_width_rules(data.sets, where, lines)
    def members(entries: list[MemberEntry]) -> tuple[Member, ...]:
        return tuple(Member(m.key, m.axis, tuple(m.starts)) for m in entries)
    return tuple(GroupSet(s.name, s.size, members(s.members), s.same_width_as or "", s.narrower_than or "", label=s.name,
                          kind=s.kind, carried=members(s.carried)) for s in data.sets)


def read_groups_text(path: Path) -> str:
    if not path.is_file():
        raise GroupsFileError(f"Groups file {path} does not exist or is not a file.", "Check the --groups path.")
    if path.stat().st_size > MAX_BYTES:
        raise GroupsFileError(f"Groups file {path} is {path.stat().st_size:,} bytes; a groups file is a few kilobytes.",
                              HINT)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise GroupsFileError(f"Cannot read groups file {path}: {err}.", HINT) from None


def check_plan_members(group_sets: tuple[GroupSet, ...], state: Mapping[str, Tensor], where: str) -> None:
    """Every member names a tensor of ``state`` and fits inside it."""
    for gs in group_sets:
        for m in (*gs.members, *gs.carried):
            if m.key not in state:
                raise GroupsFileError(f"{where}: set `{gs.name}` names tensor `{m.key}`, which the model does not have.",
                                      "Use the model's state_dict keys.")
            tensor = state[m.key]
            if m.axis >= tensor.dim() or max(m.starts) + gs.size > tensor.shape[m.axis]:
                raise GroupsFileError(
                    f"{where}: set `{gs.name}` reaches past `{m.key}` (shape {tuple(tensor.shape)}) on axis {m.axis}.",
                    "Check its size and starts.")
