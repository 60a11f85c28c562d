"""fastret: fast embedding and exact int8 search for biomedical text retrieval."""

from .cpu import available_simd_paths, get_num_threads, set_num_threads, set_simd_path, simd_path
from .encoder import Encoder
from .index import Index
from .kernels.mesh_similarity import mesh_similarity, mesh_similarity_ref
from .kernels.pooling import pool_normalize, pool_normalize_ref
from .mesh import EncodedLabels, MeshTree, UnknownMeshLabelWarning
from .quant import QUERY_MAX_CODE, quantize_int8, quantize_queries
from .search import topk_int8, topk_int8_ref
from .store import Store

__version__ = "0.1.0"

__all__ = [
    "QUERY_MAX_CODE",
    "EncodedLabels",
    "Encoder",
    "Index",
    "MeshTree",
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
