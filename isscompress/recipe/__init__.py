"""The recipe: one YAML file that says everything a run needs, validated before any work starts.

pydantic gives typed errors with locations and rejects unknown keys at every depth; PyYAML's node tree gives each
location its line, so every error names the file, the line and the key, and suggests the closest valid key. The
sections (the schema) are in :mod:`.sections`, reading and checking a file in :mod:`.reading`.
"""

from .reading import check_layer_names, load_recipe, parse_recipe, resolve_paths
from .sections import (REFERENCE, SECTIONS, BudgetSection, DataSection, DistillSection, EvaluateSection, IssSection,
                       ModelSection, Recipe, Schedule, Section, ShrinkSection)

__all__ = ["REFERENCE", "SECTIONS", "BudgetSection", "DataSection", "DistillSection", "EvaluateSection", "IssSection",
           "ModelSection", "Recipe", "Schedule", "Section", "ShrinkSection", "check_layer_names", "load_recipe",
           "parse_recipe", "resolve_paths"]
