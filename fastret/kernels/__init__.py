"""Triton kernels, one file per op, each with its plain-torch `_ref` beside it."""

from .mesh_similarity import mesh_similarity, mesh_similarity_ref
from .pooling import pool_normalize, pool_normalize_ref

__all__ = ["mesh_similarity", "mesh_similarity_ref", "pool_normalize", "pool_normalize_ref"]
