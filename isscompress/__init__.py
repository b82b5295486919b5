"""isscompress: remove whole hidden units from trained LSTMs (Intrinsic Sparse Structures).

The verbs a user calls from Python; each command of the CLI is a few lines over one of them.
"""

from .verbs.export import export_model
from .verbs.finetune import finetune, train_new
from .core.groups import GroupSet, Member, all_unit_norms, unit_norms
from .verbs.inspect import inspect_checkpoint
from .io.loading import Checkpoint, load, load_checkpoint
from .architectures.stack_module import RecurrentModel, build_model
from .verbs.run import run_recipe
from .recipe import Recipe, load_recipe
from .verbs.report import build_report, evaluate_checkpoint, report_markdown
from .verbs.shrink import shrink
from .architectures.stack import LayerSpec, ModelSpec, group_sets
from .core.surgery import mask_state_dict, shrink_state_dict
from .core.thresholding import select_kept

__all__ = [
    "Checkpoint", "GroupSet", "LayerSpec", "Member", "ModelSpec", "Recipe", "RecurrentModel", "all_unit_norms",
    "build_model", "build_report", "evaluate_checkpoint", "export_model", "finetune", "group_sets",
    "inspect_checkpoint", "load", "load_checkpoint", "load_recipe", "mask_state_dict", "report_markdown",
    "run_recipe", "select_kept", "shrink", "shrink_state_dict", "train_new", "unit_norms",
]
__version__ = "0.1.0"
