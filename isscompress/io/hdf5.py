"""HDF5 read so that only the file itself is read, and only as much of it as the budget allows.

HDF5 lets a dataset keep its bytes in another file (external storage), lets a name point into another file
(external links) and lets a dataset be assembled from other files (virtual datasets). A model file someone shared
must never pull bytes from the reader's disk into a checkpoint, so each of those is refused by name, every path is
walked one link at a time, and a dataset's declared size is taken from the ``ReadBudget`` before it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy

from ..errors import CheckpointError
from .limits import ReadBudget

WEIGHT_KINDS = "f"  # floating-point datasets only: weights


def h5py_module(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise CheckpointError(f"{path} is a Keras model (HDF5); reading it needs h5py.",
                              "pip install 'isscompress[keras]' (h5py only; TensorFlow is not needed).") from None
    return h5py


def _refuse(where: Path, name: str, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: HDF5 entry '{name}' {what}. isscompress reads only the bytes inside the file "
                           "it is given, so the file is refused.",
                           "Save the model again with Keras (model.save) so that every weight is stored in the file.")


def child(group: Any, path: str, where: Path) -> Any | None:
    """The object at ``path`` under ``group``, following only links that stay in this file; None if absent."""
    h5py = h5py_module(where)
    node = group
    for part in (p for p in path.split("/") if p):
        if not isinstance(node, h5py.Group) or part not in node:
            return None
        link = node.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise _refuse(where, path, f"is an external link to '{link.filename}'")
        if not isinstance(link, (h5py.HardLink, h5py.SoftLink)):
            raise _refuse(where, path, f"is a link of a kind isscompress does not follow ({type(link).__name__})")
        node = node[part]
    return node


def read_dataset(group: Any, path: str, budget: ReadBudget, where: Path) -> numpy.ndarray:
    """A floating-point dataset's values, after checking that they live in this file and fit the budget."""
    h5py = h5py_module(where)
    dataset = child(group, path, where)
    if dataset is None:
        raise CheckpointError(f"{where}: the weight '{path}' named by the model is missing.",
                              "The file is incomplete; save the model again.")
    if not isinstance(dataset, h5py.Dataset):
        raise CheckpointError(f"{where}: '{path}' is a group, not a weight array.", "The file is damaged.")
    if dataset.is_virtual:
        raise _refuse(where, path, "is a virtual dataset (assembled from other files)")
    if dataset.external:
        files = ", ".join(sorted({str(entry[0]) for entry in dataset.external}))
        raise _refuse(where, path, f"keeps its bytes in another file ({files})")
    if dataset.dtype.kind not in WEIGHT_KINDS or dataset.dtype.itemsize > 8:
        raise CheckpointError(f"{where}: weight '{path}' has dtype {dataset.dtype}; weights must be floating point.",
                              "The file is not a Keras model's weights, or is damaged.")
    budget.take(int(dataset.size) * dataset.dtype.itemsize, f"weight '{path}' {tuple(dataset.shape)}")
    if dataset.size and dataset.id.get_storage_size() == 0:
        raise CheckpointError(f"{where}: weight '{path}' {tuple(dataset.shape)} has no data stored (only HDF5's fill "
                              "value would be read).", "The file is incomplete or crafted; save the model again.")
    values = dataset[()]
    return numpy.asarray(values, dtype=values.dtype.newbyteorder("="))

