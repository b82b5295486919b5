"""isscompress: remove whole hidden units from trained recurrent models (Intrinsic Sparse Structures).

The verbs a user calls from Python. Each takes a checkpoint in memory or a file path, returns data
(the new checkpoint in memory among it), and writes a file only when given an output path; each
command of the CLI is a few lines over one of them.
"""

from .anymodel import GroupLasso, Plan, discover, load_groups, resize_to, shrink_module
from .architectures import Architecture, LayerSpec, ModelSpec
from .architectures.stack_module import RecurrentModel, build_model
from .core.cells import CELLS, CellKind
from .core.groups import GroupSet, Member, all_unit_norms, unit_norms
from .core.surgery import mask_state_dict, shrink_state_dict
from .core.thresholding import select_kept
from .io.loading import Checkpoint, load, load_checkpoint, save_checkpoint
from .io.metadata import Metadata
from .measure.speed import measure_speed
from .recipe import IssSection, Recipe, Schedule, load_recipe
from .training.hooks import GroupLassoHook, Hook
from .training.loop import fit
from .training.objectives import Distillation, LanguageModelLoss, Objective, distillation_divergence
from .verbs.evaluate import evaluate
from .verbs.export import export
from .verbs.finetune import finetune, train
from .verbs.inspect import inspect
from .verbs.report import report, report_markdown
from .verbs.run import run
from .verbs.shrink import shrink

__all__ = [
    "Architecture", "CELLS", "Distillation", "distillation_divergence", "GroupLasso", "Plan", "discover", "load_groups", "resize_to", "shrink_module", "CellKind", "Checkpoint", "GroupLassoHook", "GroupSet", "Hook", "IssSection",
    "LanguageModelLoss", "LayerSpec", "Member", "Metadata", "ModelSpec", "Objective", "Recipe", "RecurrentModel",
    "Schedule", "fit", "all_unit_norms", "build_model", "evaluate", "export", "finetune", "inspect", "load",
    "load_checkpoint", "load_recipe", "mask_state_dict", "measure_speed", "report", "report_markdown", "run",
    "save_checkpoint",
    "select_kept", "shrink", "shrink_state_dict", "train", "unit_norms",
]
__version__ = "0.1.0"
