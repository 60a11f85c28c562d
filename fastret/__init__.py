"""fastret: fast embedding and exact int8 search for biomedical text retrieval.

Searching vectors needs numpy, pyarrow and the C++ core only: `import fastret` and the index,
filters, stored fields, the binary stage and BM25 load neither torch, triton nor transformers. The
names that need them (the encoder and the Triton kernels) are imported on first use.
"""

import importlib

from .cpu import available_simd_paths, get_num_threads, set_num_threads, set_simd_path, simd_path
from .mesh import EncodedLabels, MeshTree, UnknownMeshLabelWarning
from .quant import QUERY_MAX_CODE, quantize_int8, quantize_queries
from .search.core import topk_int8, topk_int8_ref
from .search.index import Index
from .storage.store import Store

__version__ = "0.1.0"

# Public names whose modules import torch (and triton or transformers): loaded on first use.
_ON_FIRST_USE = {
    "Encoder": ".encode.encoder",
    "Reranker": ".rerank.reranker",
    "mesh_similarity": ".kernels.mesh_similarity",
    "mesh_similarity_ref": ".kernels.mesh_similarity",
    "pool_normalize": ".kernels.pooling",
    "pool_normalize_ref": ".kernels.pooling",
}


def __getattr__(name: str):
    if name in _ON_FIRST_USE:
        value = getattr(importlib.import_module(_ON_FIRST_USE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastret' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_ON_FIRST_USE))

__all__ = [
    "QUERY_MAX_CODE",
    "EncodedLabels",
    "Encoder",
    "Index",
    "MeshTree",
    "Reranker",
    "Store",
    "UnknownMeshLabelWarning",
    "available_simd_paths",
    "get_num_threads",
    "mesh_similarity",
    "mesh_similarity_ref",
    "pool_normalize",
    "pool_normalize_ref",
    "quantize_int8",
    "quantize_queries",
    "set_num_threads",
    "set_simd_path",
    "simd_path",
    "topk_int8",
    "topk_int8_ref",
]
