"""fastret: fast embedding and exact int8 search for biomedical text retrieval."""

from .cpu import available_simd_paths, get_num_threads, set_num_threads, set_simd_path, simd_path
from .index import Index
from .quant import quantize_int8
from .search import topk_int8, topk_int8_ref

__version__ = "0.1.0"

__all__ = [
    "Index",
    "available_simd_paths",
    "get_num_threads",
    "quantize_int8",
    "set_num_threads",
    "set_simd_path",
    "simd_path",
    "topk_int8",
    "topk_int8_ref",
]
