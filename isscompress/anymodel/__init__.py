"""ISS for any PyTorch model with recurrent layers: find the groups, regularise them, shrink the module."""

from .flow import TraceError, UnitRange
from .lasso import GroupLasso
from .groups_file import GroupsFileError
from .plan import Plan, discover, load_groups
from .resize import resize_to, shrink_module
from .split import LayerwiseRNN, split_layers

__all__ = ["GroupLasso", "GroupsFileError", "Plan", "TraceError", "UnitRange", "discover", "load_groups",
           "resize_to", "shrink_module", "split_layers", "LayerwiseRNN"]
