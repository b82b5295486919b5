"""ISS for any PyTorch model with recurrent layers: find the groups and shrink the module (its group Lasso and
label-free fine-tuning are training's: isscompress.training.lasso, isscompress.training.label_free)."""

from .flow import TraceError, UnitRange
from .groups_file import GroupsFileError
from .plan import Plan, discover, load_groups
from .resize import resize_to, shrink_module
from .split import LayerwiseRNN, split_layers

__all__ = ["GroupsFileError", "Plan", "TraceError", "UnitRange", "discover", "load_groups",
           "resize_to", "shrink_module", "split_layers", "LayerwiseRNN"]
