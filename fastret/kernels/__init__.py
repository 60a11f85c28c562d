"""Triton kernels, one file per op, each with its plain-torch `_ref` beside it."""

from .pooling import pool_normalize, pool_normalize_ref

__all__ = ["pool_normalize", "pool_normalize_ref"]
