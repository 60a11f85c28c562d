"""Hybrid retrieval: exact int8 dense search and BM25, fused.

Each side returns its top `candidates` per query (the dense side is the `search` of any
`fastret.search.rules.Searchable`: an `Index`, or a `ShardedIndex` on Ray, with rescoring when it keeps
float16 copies, and the binary first stage when asked; the lexical side `LexicalIndex.search`,
run here, on the caller, restricted to ids that are live in the dense side). Then, per query:

- reciprocal rank fusion ("rrf"): score(d) = sum over the sides that found d of 1 / (rrf_k + rank),
  rank counted from 1, rrf_k = 60 (Cormack et al., 2009);
- weighted ("weighted"): each side's scores min-max normalised over its candidates (all 1 when
  they are equal), score(d) = alpha * dense(d) + (1 - alpha) * lexical(d), a side that did not find
  d adding 0.

Results are ordered by fused score, then by id (lower first: `fastret.search.rules.rank`), so fusion
is deterministic.
The defaults were chosen on the NFCorpus dev split with all-MiniLM-L6-v2
(benchmarks/hybrid_nfcorpus.py); the test split was not looked at to choose them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .lexical import LexicalIndex
from .rules import EMPTY_ID, Searchable, pad, take_top

METHODS = ("rrf", "weighted")
RRF_K = 60
DEFAULT_METHOD = "weighted"
DEFAULT_ALPHA = 0.6
DEFAULT_CANDIDATES = 100


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], k: int, rrf_k: int = RRF_K):
    """Fuse ranked id lists by reciprocal rank.

    Args:
        rankings: one int64 [q, n_i] array of ids per side, best first; -1 marks an empty slot.
        k: results per query.
        rrf_k: the constant in 1 / (rrf_k + rank).

    Returns:
        (scores float32 [q, k], ids int64 [q, k]); short rows end in (-inf, -1).
    """
    n_queries = len(rankings[0])
    fused = []
    for q in range(n_queries):
        scores: dict[int, float] = {}
        for ranking in rankings:
            for rank, doc in enumerate(ranking[q].tolist(), 1):
                if doc >= 0:
                    scores[doc] = scores.get(doc, 0.0) + 1.0 / (rrf_k + rank)
        fused.append(scores)
    return _top(fused, k)


def weighted_fusion(dense: tuple[np.ndarray, np.ndarray], lexical: tuple[np.ndarray, np.ndarray], k: int,
                    alpha: float = DEFAULT_ALPHA):
    """Fuse two (scores [q, n], ids [q, n]) lists by a weighted sum of min-max normalised scores.

    Returns:
        (scores float32 [q, k], ids int64 [q, k]); short rows end in (-inf, -1).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    fused = []
    for q in range(len(dense[0])):
        scores: dict[int, float] = {}
        for (side_scores, side_ids), weight in ((dense, alpha), (lexical, 1.0 - alpha)):
            found = side_ids[q] >= 0
            values, ids = side_scores[q][found].astype(np.float64), side_ids[q][found]
            if len(values) == 0:
                continue
            low, high = values.min(), values.max()
            normalised = (values - low) / (high - low) if high > low else np.ones_like(values)
            for doc, value in zip(ids.tolist(), normalised.tolist()):
                scores[doc] = scores.get(doc, 0.0) + weight * value
        fused.append(scores)
    return _top(fused, k)


def _top(fused: list[dict[int, float]], k: int):
    """The k best of each query's {id: fused score} (ranked in float64), padded to k."""
    width = max(1, max(len(scores) for scores in fused))
    all_scores = np.full((len(fused), width), -np.inf)
    all_ids = np.full((len(fused), width), EMPTY_ID, np.int64)
    for q, scores in enumerate(fused):
        all_ids[q, : len(scores)] = list(scores)
        all_scores[q, : len(scores)] = list(scores.values())
    return pad(*take_top(k, all_scores, all_ids), k)


class HybridSearcher:
    """A dense `Searchable` (`Index`, `ShardedIndex`) + `LexicalIndex` over the same ids, searched together.

    Example:
        >>> searcher = HybridSearcher(fastret.Index.load("store/"), LexicalIndex.load("store/"))
        >>> scores, ids = searcher.search(texts, encoder.encode(texts), k=10)

    Raises:
        TypeError: `index` is not a Searchable or `lexical` not a LexicalIndex.
    """

    def __init__(self, index: Searchable, lexical: LexicalIndex):
        if not isinstance(index, Searchable) or not isinstance(lexical, LexicalIndex):
            raise TypeError(f"HybridSearcher needs a Searchable (fastret.Index, fastret.search.distributed.ShardedIndex) "
                            f"and a fastret.search.lexical.LexicalIndex, got {type(index).__name__} and "
                            f"{type(lexical).__name__}")
        self.index = index
        self.lexical = lexical

    def search(self, texts: Sequence[str], vectors: Any, k: int = 10, *, method: str = DEFAULT_METHOD,
               alpha: float = DEFAULT_ALPHA, candidates: int = DEFAULT_CANDIDATES, rescore: bool | None = None,
               filter: Any = None, first_stage: str = "int8", oversample: int | str = "auto"):
        """Hybrid top-k for queries given both as text (BM25) and as vectors (dense).

        Args:
            texts: q query strings. vectors: float [q, dim], the same queries embedded.
            k: results per query. method: "rrf" or "weighted". alpha: the dense weight ("weighted").
            candidates: results taken from each side before fusion (at least k).
            rescore: rescore the dense side with float16 copies (default: when the index has them).
            filter: as the dense side's `search` (fastret.search.filters): both sides search only the
                documents that pass it.
            first_stage, oversample: as the dense side's `search`: "binary" picks the dense
                candidates by the binary first stage (`Index.search`).

        Returns:
            (fused scores float32 [q, k], ids int64 [q, k]); rows end in (-inf, -1) when both sides
            together found fewer than k documents.

        Raises:
            ValueError: unknown method, alpha outside [0, 1], candidates < k, or as the dense side's `search`
                (a bad first_stage or oversample among them).
            TypeError: texts that are not str, or as the dense side's `search` (an oversample that is
                not an int).
        """
        if method not in METHODS:
            raise ValueError(f"unknown fusion method {method!r}; expected one of {', '.join(METHODS)}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < k:
            raise ValueError(f"candidates must be an int >= k ({k}), got {candidates!r}")
        rescore = self.index.store_float16 if rescore is None else rescore
        depth = min(candidates, len(self.index))
        dense = self.index.search(vectors, depth, rescore=rescore, filter=filter, first_stage=first_stage,
                                  oversample=oversample)
        if len(dense[1]) != len(texts):
            raise ValueError(f"{len(texts)} query texts but {len(dense[1])} query vectors")
        allowed = None if filter is None else self.index.contains(self.lexical.ids, filter=filter)
        lex_scores, lex_ids = self.lexical.search(texts, candidates, allowed=allowed)
        missing = (lex_ids != EMPTY_ID) & ~self.index.contains(np.maximum(lex_ids, 0))
        lex_scores, lex_ids = np.where(missing, -np.inf, lex_scores), np.where(missing, EMPTY_ID, lex_ids)
        closed = np.argsort(lex_ids < 0, axis=1, kind="stable")  # close the gaps: ranks count found ids
        lex_scores, lex_ids = np.take_along_axis(lex_scores, closed, 1), np.take_along_axis(lex_ids, closed, 1)
        if method == "rrf":
            return reciprocal_rank_fusion([dense[1], lex_ids], k)
        return weighted_fusion(dense, (lex_scores, lex_ids), k, alpha)
