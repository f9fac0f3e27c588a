"""Weft: shared contracts of the mesh (identity, model, wire formats, the CLI dispatcher)."""

__version__ = "0.1.0"
