"""isscompress: remove whole hidden units from trained LSTMs (Intrinsic Sparse Structures)."""

from .groups import GroupSet, Member, all_unit_norms, unit_norms
from .loading import Checkpoint, load, load_checkpoint
from .model import RecurrentModel, build_model
from .spec import LayerSpec, ModelSpec, group_sets
from .surgery import mask_state_dict, shrink_state_dict
from .thresholding import select_kept

__all__ = [
    "Checkpoint", "GroupSet", "LayerSpec", "Member", "ModelSpec", "RecurrentModel", "all_unit_norms",
    "build_model", "group_sets", "load", "load_checkpoint", "mask_state_dict", "select_kept",
    "shrink_state_dict", "unit_norms",
]
__version__ = "0.1.0"
