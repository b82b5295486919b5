"""isscompress: remove whole hidden units from trained LSTMs (Intrinsic Sparse Structures).

The verbs a user calls from Python; each command of the CLI is a few lines over one of them.
"""

from .export import export_model
from .finetuning import finetune, train_new
from .groups import GroupSet, Member, all_unit_norms, unit_norms
from .inspection import inspect_checkpoint
from .loading import Checkpoint, load, load_checkpoint
from .model import RecurrentModel, build_model
from .pipeline import run_recipe
from .recipe import Recipe, load_recipe
from .report import build_report, evaluate_checkpoint, report_markdown
from .shrinking import shrink
from .spec import LayerSpec, ModelSpec, group_sets
from .surgery import mask_state_dict, shrink_state_dict
from .thresholding import select_kept

__all__ = [
    "Checkpoint", "GroupSet", "LayerSpec", "Member", "ModelSpec", "Recipe", "RecurrentModel", "all_unit_norms",
    "build_model", "build_report", "evaluate_checkpoint", "export_model", "finetune", "group_sets",
    "inspect_checkpoint", "load", "load_checkpoint", "load_recipe", "mask_state_dict", "report_markdown",
    "run_recipe", "select_kept", "shrink", "shrink_state_dict", "train_new", "unit_norms",
]
__version__ = "0.1.0"
