"""isscompress: remove whole hidden units from trained recurrent models (Intrinsic Sparse Structures).

The verbs a user calls from Python. Each takes a checkpoint in memory or a file path, returns data
(the new checkpoint in memory among it), and writes a file only when given an output path; each
command of the CLI is a few lines over one of them.

Names are imported on first use (PEP 562), so ``isscompress --help`` and a mistyped command answer without
importing torch. ``__all__`` is the public API: the verbs and their results, load/save, the recipe types, the
any-model calls (with unit norms and masking) and the errors a caller catches. Other names (the cell table, the
training loop's pieces, ``build_model``, ...) stay reachable here for compatibility and for extending isscompress,
and live in their modules.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_PUBLIC = {
    # verbs, and what they return
    "inspect": "verbs.inspect", "finetune": "verbs.finetune", "train": "verbs.finetune", "shrink": "verbs.shrink",
    "evaluate": "verbs.evaluate", "report": "verbs.report", "report_markdown": "verbs.report", "export": "verbs.export",
    "run": "verbs.run", "Inspection": "verbs.inspect", "FinetuneResult": "verbs.stage",
    "ShrinkResult": "verbs.shrink", "Report": "verbs.report", "ExportResult": "verbs.export", "RunResult": "verbs.run",
    "Perplexity": "measure.perplexity",
    # load / save
    "load": "io.loading", "load_checkpoint": "io.loading", "save_checkpoint": "io.loading", "Checkpoint": "io.loading",
    "Metadata": "io.metadata",
    # recipes
    "load_recipe": "recipe", "Recipe": "recipe", "Schedule": "recipe", "IssSection": "recipe",
    "BudgetSection": "recipe", "DistillSection": "recipe",
    # a new language model's shape (train's argument)
    "ModelSpec": "architectures", "LayerSpec": "architectures",
    # any model
    "discover": "anymodel", "Plan": "anymodel", "load_groups": "anymodel", "shrink_module": "anymodel",
    "resize_to": "anymodel", "split_layers": "anymodel", "LayerwiseRNN": "anymodel", "MLSTMLayer": "layers.mlstm",
    "HardSigmoidLSTM": "layers.hard_lstm", "OnnxModule": "architectures.onnx_torch", "onnx_module": "io.onnx_models",
    "GroupLasso": "training.lasso",
    "all_unit_norms": "core.groups", "mask_state_dict": "core.surgery", "select_kept": "core.thresholding",
    "shrink_state_dict": "core.surgery", "distillation_divergence": "training.objectives",
    # errors: what a caller catches (every message is one paragraph: the problem, then what to do)
    "IsscompressError": "errors", "CheckpointError": "errors", "ShapeError": "errors", "RecipeError": "errors",
    "DataError": "errors", "ShrinkError": "errors", "Interrupted": "errors", "Diverged": "errors",
    "TraceError": "anymodel", "GroupsFileError": "anymodel",
}
_INTERNAL = {  # reachable for compatibility and for extending isscompress; documented in their modules
    "RecurrentModel": "architectures.stack_module", "build_model": "architectures.stack_module",
    "Architecture": "architectures", "TracedModel": "architectures",
    "GroupSet": "core.groups", "Member": "core.groups", "CELLS": "layers.cells", "CellKind": "layers.cells",
    "unit_norms": "core.groups", "measure_speed": "measure.speed", "fit": "training.loop", "fit_task": "training.loop",
    "Hook": "training.hooks", "GroupLassoHook": "training.iss_hook",
    "Objective": "training.objectives", "LanguageModelLoss": "training.objectives",
    "Distillation": "training.objectives",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


_SUBPACKAGES = {"anymodel", "architectures", "cli", "core", "data", "deploy", "errors", "io", "layers", "measure",
                "recipe", "training", "verbs", "yaml_lines"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    module = _PUBLIC.get(name) or _INTERNAL.get(name)
    if module is None:
        raise AttributeError(f"module 'isscompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_INTERNAL})
