"""Recurrent layers PyTorch does not have, with the parameter naming of its own layers (``{name}_l0``)."""
