"""docs/recipe.md, generated from the recipe schema (``python -m isscompress.recipe_reference > docs/recipe.md``;
a test keeps the file and the schema equal)."""

from __future__ import annotations

from .recipe import REFERENCE


def _schema_type(prop: dict) -> str:
    """A short human type from a JSON-schema property: 'integer > 0', 'sgd | adam', 'path or null'."""
    if "anyOf" in prop:
        kinds = [_schema_type(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(kinds) + " or null"
    if "enum" in prop or "const" in prop:
        return " or ".join(f"'{v}'" for v in prop.get("enum", [prop.get("const")]))
    kind = {"string": "path" if prop.get("format") == "path" else "string", "number": "number",
            "integer": "integer", "boolean": "boolean", "object": "mapping"}.get(prop.get("type", ""), "value")
    bounds = [f"> {prop['exclusiveMinimum']}" if "exclusiveMinimum" in prop else "",
              f">= {prop['minimum']}" if "minimum" in prop else "",
              f"< {prop['exclusiveMaximum']}" if "exclusiveMaximum" in prop else "",
              f"<= {prop['maximum']}" if "maximum" in prop else ""]
    return " ".join([kind, *[b for b in bounds if b]])


def reference_markdown() -> str:
    """docs/recipe.md, generated from the schema (a test keeps the file and the schema equal)."""
    lines = ["# Recipe reference", "",
             "Generated from `isscompress/recipe/sections.py` (`python -m isscompress.recipe_reference > docs/recipe.md`). Every key",
             "is optional; unknown keys are errors. Paths (data files, the vocabulary, `distill.teacher`) are relative",
             "to the recipe's folder, never the working directory. `recover` takes the same keys as `finetune` and",
             "runs after shrinking, without ISS; without a `recover` section there is none.",
             "",
             "A recipe is plain YAML of at most 1 MB (100,000 values, 64 levels deep): anchors and aliases, merge keys",
             "(`<<`), explicit tags (`!!set`, `!!python/...`), complex keys and duplicate keys are refused by line.",
             "`data.split` writes its three parts to a private cache (`$XDG_CACHE_HOME/isscompress/splits`, else",
             "`~/.cache/...`; folders 0700, files 0600, checked to be yours), and reuses a part only when it is",
             "exactly that text's.",
             ""]
    for name, model in REFERENCE.items():
        lines += [f"## `{name}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        properties = model.model_json_schema(by_alias=True)["properties"]
        for field_name, info in model.model_fields.items():
            key = info.alias or field_name
            default = "" if info.is_required() else repr(info.get_default(call_default_factory=True))
            meaning = (info.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {_schema_type(properties[key])} | `{default}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown(), end="")
