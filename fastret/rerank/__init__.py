"""Re-ranking: a cross-encoder scores (query, text) pairs (`Reranker`), the stage after retrieval."""

from .reranker import RERANKER_PRESETS, Reranker

__all__ = ["RERANKER_PRESETS", "Reranker"]
