"""The rules every searcher shares (the search seam), written once.

    score(q, d) = (float32(<q8, d8>) * s_q) * s_d

Results are ordered by score (higher first), then by id (lower first): `rank` is that rule, the
one place it is written in Python (the C++ core has its own; the torch backend ranks the 64-bit
keys of fastret.search.torch_backend). Every backend returns the same ids and scores as
`fastret.search.core.topk_int8_ref`.

The seam: `Searchable` is what `Index` and `fastret.search.distributed.ShardedIndex` both are, and
what every consumer (TextSearch, HybridSearcher, evaluation) takes. A searchable answers
`candidates` (its top c by int8 score, optionally with float dot products); `search_by_candidates`
turns those into `search` results, rescoring with `rescored` when asked and padding results that a
filter left short, for every searchable alike. `merge_candidates` joins the candidates of segments
or shards by the same rule. The binary first stage is a way to pick candidates that every
searchable takes (`first_stage`, `oversample`), checked once by `check_first_stage`. The backends
that search a list of segments are fastret.search.core (the C++ core, and the binary first stage)
and fastret.search.torch_backend (torch on the queries' device).

Scores must stay finite: a query whose scale could push a score past float32's range is refused
(`check_score_range`) rather than ranked by inf and NaN. The core itself ranks a NaN score as -inf,
so no input it is handed can make it return fewer than k rows or a made-up one.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from .. import checks
from ..quant import quantize_queries, quantized_vectors
from ..storage.index_file import IndexFileError
from ..storage.segment import Segment
from . import binary

# The largest |<q8, d8>| per dimension: query codes in [-127, 127], corpus codes in [-128, 127].
_MAX_PRODUCT = 127 * 128
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_score_range(query_scales: np.ndarray, max_corpus_scale: float, dim: int) -> None:
    """Refuse queries whose scores could overflow float32 (and turn into inf or NaN).

    A score is (float(<q8, d8>) * s_q) * s_d with |<q8, d8>| <= dim * 127 * 128; both products must
    stay finite. Real embeddings are many orders of magnitude inside this bound.

    Raises:
        ValueError: naming the largest query value and the bound.
    """
    largest_query = float(np.max(query_scales, initial=0.0))
    bound = dim * _MAX_PRODUCT * largest_query
    if bound > _FLOAT32_MAX or bound * float(max_corpus_scale) > _FLOAT32_MAX:
        raise ValueError(
            f"queries with scales up to {largest_query:.3g} against vectors with scales up to "
            f"{float(max_corpus_scale):.3g} (value / code) could give scores beyond float32's range "
            f"({_FLOAT32_MAX:.3g}); normalize the vectors (embeddings are usually unit length)"
        )


# ---------------------------------------------------------------------------------- the search seam

EMPTY_ID = -1  # the id of an empty slot in a short result (its score is -inf)


def rank(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The tie rule: positions of the k best entries of each row, higher score first, then lower id.

    Args:
        scores: float [q, n]. ids: int [q, n], or [n] shared by every row. numpy arrays, or torch
            tensors on one device (ranked there: a stable sort by id, then a stable sort by score).
        k: entries kept per row (all n when k >= n).

    Returns:
        int64 [q, min(k, n)] positions into each row, best first (a tensor for tensors).
    """
    if checks.is_torch(scores):
        import torch

        by_id = torch.sort(ids.expand_as(scores), dim=1, stable=True).indices
        by_score = torch.sort(scores.gather(1, by_id), dim=1, descending=True, stable=True).indices
        return by_id.gather(1, by_score)[:, :k]
    return np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=-1)[:, :k]


def take_top(k: int, scores: np.ndarray, ids: np.ndarray, *others: np.ndarray) -> tuple:
    """The k best entries of each row by `rank`: (scores, ids, *others), each [q, min(k, n)]
    (ids may be [n], shared by every row)."""
    ids = np.broadcast_to(ids, scores.shape)
    order = rank(scores, ids, k)
    return tuple(np.take_along_axis(a, order, axis=1) for a in (scores, ids, *others))


def pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Short results [q, n <= k] as (scores float32 [q, k], ids int64 [q, k]) ending in (-inf, EMPTY_ID)."""
    out_scores = np.full((len(scores), k), -np.inf, np.float32)
    out_ids = np.full((len(ids), k), EMPTY_ID, np.int64)
    out_scores[:, : scores.shape[1]], out_ids[:, : ids.shape[1]] = scores, ids
    return out_scores, out_ids


@runtime_checkable
class Searchable(Protocol):
    """What every searcher offers (`fastret.Index`, `fastret.search.distributed.ShardedIndex`), and what
    HybridSearcher, `fastret search`, `fastret serve` and evaluation take.

    `search` and `candidates` follow `Index.search` and `Index.candidates` (same arguments and
    errors, filters and the binary first stage included; the results are those of `Index`, except
    where a searcher's own docstring says how they may differ); `contains`, `documents` and
    `fields` follow `Index.contains`, `Index.documents` and `Index.fields`; `device` says where
    searches run ("cpu", or a CUDA device: `Index.to`).
    """

    @property
    def dim(self) -> int: ...

    @property
    def store_float16(self) -> bool: ...

    @property
    def has_documents(self) -> bool: ...

    @property
    def device(self) -> str: ...

    def __len__(self) -> int: ...

    def search(self, queries: Any, k: int = 10, *, rescore: bool = False, rescore_factor: int = 4,
               filter: Any = None, first_stage: str = "int8", oversample: int | str = "auto"): ...

    def candidates(self, queries: Any, c: int, *, exact: bool = False, filter: Any = None,
                   first_stage: str = "int8", oversample: int | str = "auto"): ...

    def contains(self, ids: Any, *, filter: Any = None) -> np.ndarray: ...

    def documents(self, ids: Any) -> np.ndarray: ...

    def fields(self, ids: Any, names: Sequence[str] | None = None) -> list: ...


class SearchableBase:
    """What `Index` and `ShardedIndex` keep alike: the vectors' dimension and whether float16 copies
    are kept for rescoring, both fixed when the index is made."""

    def __init__(self, dim: int, store_float16: bool):
        self._dim = int(dim)
        self._store_float16 = bool(store_float16)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def store_float16(self) -> bool:
        """Whether float16 copies are kept for rescoring."""
        return self._store_float16

    @property
    def device(self) -> str:
        """Where searches run: "cpu" unless a searcher says otherwise (`Index.to`)."""
        return "cpu"


def check_rescore(store_float16: bool, queries: Any, rescore_factor: Any) -> None:
    """Refuse rescoring that cannot be done: no float16 copies, (codes, scales) queries, a bad factor.

    Raises:
        ValueError: naming what is missing and how to get it.
    """
    if not store_float16:
        raise ValueError("rescore=True needs float16 copies; build the index with Index(dim, store_float16=True) "
                         "(a store: encode it with --float16)")
    if isinstance(queries, tuple):
        raise ValueError("rescore=True needs float queries, not (codes, scales)")
    if isinstance(rescore_factor, bool) or not isinstance(rescore_factor, (int, np.integer)) or rescore_factor < 1:
        raise ValueError(f"rescore_factor must be an int >= 1, got {rescore_factor!r}")


def query_codes(queries: Any, dim: int, device: Any = None):
    """Checked, quantized queries: (codes int8 [q, dim], scales float32 [q], float32 [q, dim] or None).

    Float queries are quantized with `quantize_queries` (and kept, for rescoring); a (codes, scales)
    tuple is taken as it is. One 1-D vector counts as q = 1. Numpy arrays come back for numpy and
    CPU torch input; torch tensors on the GPU for CUDA input, or on `device` when given.

    Raises:
        TypeError, ValueError: wrong dtype or shape, a dimension other than `dim`, NaN or inf.
    """
    cuda = checks.is_cuda(queries[0] if isinstance(queries, tuple) and queries else queries)
    if device is None and not cuda:
        return quantized_vectors(queries, "queries", dim, queries=True)
    import torch

    device = device if device is not None else (queries[0] if isinstance(queries, tuple) else queries).device
    floats = None
    if isinstance(queries, tuple):
        if len(queries) != 2:
            raise ValueError("queries as a tuple must be (codes int8 [q, d], scales float32 [q]), "
                             f"got {len(queries)} items")
        codes, scales = (torch.as_tensor(part, device=device) for part in queries)
        if codes.dtype != torch.int8:
            raise TypeError(f"query codes must be int8, got {codes.dtype}; quantize with fastret.quantize_queries")
        if codes.ndim == 1:
            codes, scales = codes[None], scales.reshape(1)
    else:
        floats = torch.as_tensor(queries, device=device)
        if not floats.dtype.is_floating_point:
            raise TypeError(f"queries must be floating point, got {floats.dtype}")
        floats = floats[None] if floats.ndim == 1 else floats
    shape = tuple((codes if floats is None else floats).shape)
    if len(shape) != 2 or shape[1] != dim or shape[0] == 0:
        raise ValueError(f"queries must be [q, {dim}] with q >= 1, got {shape}")
    if floats is None:
        if tuple(scales.shape) != shape[:1]:
            raise ValueError(f"query scales must be 1-D with one scale per query ({shape[0]}), "
                             f"got shape {tuple(scales.shape)}")
        if (codes == -128).any():
            raise ValueError("query codes contain -128; fastret uses symmetric codes in [-127, 127] "
                             "(quantize with fastret.quantize_queries, or clip)")
    else:
        if not torch.isfinite(floats).all():
            raise ValueError("queries contain NaN or inf; clean the input")
        floats = floats.float()
        codes, scales = quantize_queries(floats)
    return codes, scales.float(), floats


def search_by_candidates(candidates: Callable, live: int, store_float16: bool, queries: Any, k: int, *,
                         rescore: bool = False, rescore_factor: int = 4):
    """`search` for any searchable, from its `candidates`: the top k by int8 score, or the top
    min(live, k x rescore_factor) by int8 score re-ranked by their float dot products (`rescored`).

    Args:
        candidates: `candidates(queries, c, exact)` of the searchable, on one consistent state;
            under a filter it returns fewer than c columns when fewer rows pass, and the results
            are padded to k (`pad`).
        live: the searchable's live vectors in that state.
        store_float16: whether it keeps float16 copies.
        queries, k, rescore, rescore_factor: as `Index.search`.

    Returns:
        (scores float32 [q, k], ids int64 [q, k]): numpy arrays, or torch tensors on the queries'
        device for torch queries.

    Raises:
        TypeError, ValueError: as `Index.search`.
    """
    k = checks.check_k(k, live)
    wanted = k
    if rescore:
        check_rescore(store_float16, queries, rescore_factor)
        wanted = min(live, k * int(rescore_factor))
    found = candidates(queries, wanted, bool(rescore))
    scores, ids = rescored(found, k) if rescore else found[:2]
    if scores.shape[1] < k:  # a filter let fewer than k rows pass
        scores, ids = pad(scores, ids, k)
    if checks.is_torch(queries):
        import torch

        return torch.from_numpy(scores).to(queries.device), torch.from_numpy(ids).to(queries.device)
    return scores, ids


def rescored(candidates: tuple, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescoring: candidates (int8 scores, ids, float dot products) [q, c] re-ranked by their float
    dot products: (float scores float32 [q, k], ids int64 [q, k]), ties to the lower id."""
    _, ids, exact = candidates
    exact, ids = take_top(k, exact, ids)
    return exact, ids


def merge_candidates(parts: Sequence[tuple], c: int) -> tuple:
    """Join the candidates of several segments or shards as one index would rank them.

    Args:
        parts: per segment or shard (int8 scores float32 [q, c_i], ids int64 [q, c_i], float dot
            products float32 [q, c_i] or None).
        c: candidates kept per query (at most the sum of the c_i).

    Returns:
        (int8 scores float32 [q, c], ids int64 [q, c], float dot products [q, c] or None), best
        int8 score first, ties to the lower id.
    """
    joined = [np.concatenate([p[i] for p in parts], axis=1) for i in range(2)]
    if parts[0][2] is None:
        return (*take_top(c, *joined), None)
    return take_top(c, *joined, np.concatenate([p[2] for p in parts], axis=1))


def float_products(float16: Any, queries: Any):
    """float32 [q, c]: dot products of float queries [q, d] with their candidates' float16 copies
    [q, c, d] (numpy arrays, or torch tensors of one device).

    Raises:
        IndexFileError: a copy holds NaN or inf (a corrupted file read without verification).
    """
    if checks.is_torch(float16):
        import torch

        vectors = float16.float()
        finite = bool(torch.isfinite(vectors).all())
    else:
        vectors = float16.astype(np.float32)
        finite = bool(np.isfinite(vectors).all())
    if not finite:
        raise IndexFileError("the float16 copies of some candidates hold NaN or inf: the index file is "
                             "corrupted (load it with verify=True to find out which)")
    # A sum over each row, not a batched matmul: its summation order depends on the batch's shape,
    # and a candidate must get the same score from every shard and segment it is searched in.
    return (vectors * queries[:, None, :]).sum(-1)


FIRST_STAGES = ("int8", "binary")


def check_first_stage(first_stage: Any, oversample: Any) -> int | str | None:
    """The oversample a search with `first_stage` uses: None for "int8", else an int >= 1 or "auto"
    (fastret.search.binary.auto_oversample picks it from the rows searched), or a clear error.
    None and "auto" mean the default with either stage.

    Raises:
        ValueError, TypeError: an unknown first stage, an oversample that is neither "auto" nor an
            int >= 1, or a number given without first_stage="binary".
    """
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {', '.join(map(repr, FIRST_STAGES))}, got {first_stage!r}")
    if oversample is None or (isinstance(oversample, str) and oversample == binary.AUTO):
        return None if first_stage == "int8" else binary.AUTO
    if isinstance(oversample, str):
        raise ValueError(f"oversample must be {binary.AUTO!r} or an int >= 1 (binary candidates per result), "
                         f"got {oversample!r}")
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)):
        raise TypeError(f"oversample must be {binary.AUTO!r} or an int >= 1 (binary candidates per result), "
                        f"got {oversample!r}")
    if first_stage == "int8":
        raise ValueError("oversample (binary candidates per result) applies to the binary first stage only: "
                         "ask for it too (first_stage='binary', --binary, \"binary\": true) or drop oversample")
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1 (binary candidates per result) or {binary.AUTO!r}, got {oversample}")
    return int(oversample)


def max_scale(segments: Sequence[Segment]) -> float:
    """The largest scale of any segment's vectors (0 for none): what `check_score_range` bounds."""
    return max((s.max_scale() for s in segments), default=0.0)


