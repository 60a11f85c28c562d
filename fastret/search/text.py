"""`TextSearch`: query texts in, hits out; the one chain that `fastret search`, `POST /search`,
`fastret eval` and the demo call.

    texts -> filter (+ MeSH tree for $under) -> first stage (int8 | binary) -> dense or hybrid
          -> [re-rank the top N with a cross-encoder] -> hits named by document ids, with stored fields

Every rule a search's arguments must meet is checked here or below (in the search seam,
fastret.search.rules), once, and before any query is embedded (`check`), so a face only parses its
input, calls `TextSearch`, and prints or serializes what comes back. A new stage is written here
once and every door has it: re-ranking is one (`rank(..., rerank=True)`: the dense or hybrid top
`rerank_top` scored again by a cross-encoder, `fastret.rerank.Reranker`, reading each document's
stored text, and its top k kept).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..mesh import MeshTree
from . import hybrid as fusion_rules
from .filters import Filter
from .hybrid import HybridSearcher
from .lexical import LexicalIndex
from .rules import Searchable, check_first_stage, check_rescore
from .searchers import open_searchable

# A document's text for the reranker: these stored fields, joined by a space (BEIR corpora and
# `fastret encode --fields` keep "title" and "text"; MedCPT's cross-encoder reads title and abstract).
RERANK_FIELDS = ("title", "text")
DEFAULT_RERANK_TOP = 100  # candidates re-ranked per query


@dataclass(frozen=True)
class Hit:
    """One result: the document's id (its document id, or the vector's int id in an index without
    document ids), its score, and its stored fields when they were asked for."""

    id: str | int
    score: float
    fields: dict | None = None


class TextSearch:
    """Search a `Searchable` (an `Index`, a `ShardedIndex`) with query texts.

    Args:
        searchable: what to search; None for BM25 alone (`rank_bm25`).
        encoder: embeds the queries (`encode(texts, batch_size=, prompt_name=)` -> float32 [q, d],
            and `dim`), e.g. a `fastret.Encoder`; None when every call passes `vectors`.
        lexical: the BM25 index for hybrid searches: a `LexicalIndex`, or a store directory whose
            BM25 index is loaded on the first hybrid search; None: no hybrid search.
        mesh: the MeSH tree (a `MeshTree` or its file) for `$under` in filters.
        reranker: scores (query, document text) pairs for `rerank=True`
            (`predict(pairs, batch_size=) -> float32 [n]`), e.g. a `fastret.Reranker`; None: no re-ranking.
        rerank_fields: the stored fields whose values, joined by spaces, are a document's text for the
            reranker (missing ones skipped).

    Raises:
        ValueError: an encoder whose vectors have another dimension than the index's.

    Example:
        >>> search = TextSearch.open("store/", fastret.Encoder("all-MiniLM-L6-v2"))
        >>> search.search(["statins and breast cancer"], 5, filter={"year": {"$gte": 2018}}, fields=["title"])
        [[Hit(id='MED-2427', score=0.71, fields={'title': ...}), ...]]
    """

    def __init__(self, searchable: Searchable | None, encoder: Any = None, *, lexical: LexicalIndex | str | os.PathLike |
                 None = None, mesh: MeshTree | str | os.PathLike | None = None, reranker: Any = None,
                 rerank_fields: Sequence[str] = RERANK_FIELDS):
        self.searchable = searchable
        self.encoder = encoder
        self.mesh = mesh if mesh is None or isinstance(mesh, MeshTree) else MeshTree.from_file(mesh)
        self._lexical = lexical
        self.reranker = reranker
        self.rerank_fields = tuple(rerank_fields)

    @property
    def encoder(self) -> Any:
        """What embeds the queries (None: every call passes vectors); set it when it is loaded later."""
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: Any) -> None:
        if encoder is not None and self.searchable is not None and encoder.dim != self.searchable.dim:
            raise ValueError(f"the model makes {encoder.dim}-d vectors but the index holds {self.searchable.dim}-d "
                             "ones; search with the model that built the index")
        self._encoder = encoder

    @classmethod
    def open(cls, path: str | os.PathLike, encoder: Any = None, *, shards: int | None = None,
             ray_address: str | None = None, replicas: int = 1, mesh: MeshTree | str | os.PathLike | None = None,
             verify: bool = True, reranker: Any = None, device: Any = "cpu") -> "TextSearch":
        """A store directory or index file, searched here (on the CPU, or on a CUDA GPU: `device`,
        see `Index.to`) or on Ray (`fastret.search.searchers.open_searchable` takes `shards`,
        `ray_address`, `replicas`, `verify` and `device`); a store's BM25 index serves hybrid searches."""
        path = Path(path)
        searchable = open_searchable(path, shards=shards, ray_address=ray_address, replicas=replicas, verify=verify,
                                     device=device)
        return cls(searchable, encoder, lexical=path if path.is_dir() else None, mesh=mesh, reranker=reranker)

    def lexical(self) -> LexicalIndex:
        """The BM25 index of hybrid searches (a store's is loaded on first use).

        Raises:
            ValueError (a StoreError for a store without one): no BM25 index to search.
        """
        if self._lexical is None:
            raise ValueError("a hybrid search needs a BM25 index: search a store directory built with --bm25 "
                             "(fastret encode --bm25, or fastret index STORE --bm25 --corpus CORPUS)")
        if not isinstance(self._lexical, LexicalIndex):
            self._lexical = LexicalIndex.load(self._lexical)
        return self._lexical

    def filter(self, spec: Any) -> Filter | None:
        """A filter as the faces take it (a dict, its JSON text, a `Filter`, or None) as a `Filter`.

        Raises:
            fastret.search.filters.FilterError (a ValueError): a bad filter, naming the part.
        """
        if spec is None or isinstance(spec, Filter):
            return spec
        if isinstance(spec, str):
            return Filter.from_json(spec, mesh=self.mesh)
        return Filter(spec, mesh=self.mesh)

    def check(self, k: int = 10, *, filter: Any = None, rescore: bool | None = None, rescore_factor: int = 4,
              hybrid: bool = False, first_stage: str = "int8", oversample: int | str = "auto",
              fusion: str | None = None, alpha: float | None = None, candidates: int | None = None,
              rerank: bool = False, rerank_top: int | None = None) -> Filter | None:
        """Check a search's arguments (those of `rank`) without embedding or searching; returns the filter.

        Raises:
            ValueError, TypeError: k that is not an int >= 1; a bad filter; rescoring without float16
                copies; an unknown first stage, or an oversample without the binary one; fusion
                settings without `hybrid`, or a hybrid search without a BM25 index; re-ranking
                without a reranker or stored text, or a rerank_top that is not an int >= 1.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1 (results per query), got {k!r}")
        spec = self.filter(filter)
        if rescore:
            check_rescore(self.searchable.store_float16, None, rescore_factor)
        check_first_stage(first_stage, oversample)
        if hybrid:
            self.lexical()
        elif fusion is not None or alpha is not None or candidates is not None:
            raise ValueError("fusion, alpha and candidates set how a hybrid search fuses its two sides: "
                             "ask for a hybrid search too, or drop them")
        if rerank:
            self._check_rerank(rerank_top)
        elif rerank_top is not None:
            raise ValueError("rerank_top sets how many candidates the cross-encoder re-ranks: ask for re-ranking "
                             "too (rerank=True, --reranker MODEL), or drop it")
        return spec

    def _check_rerank(self, rerank_top: int | None) -> None:
        if self.reranker is None:
            raise ValueError("re-ranking needs a cross-encoder: open the search with reranker=fastret.Reranker(MODEL) "
                             "(the CLI and the server: --reranker MODEL)")
        if rerank_top is not None and (isinstance(rerank_top, bool) or not isinstance(rerank_top, (int, np.integer))
                                       or rerank_top < 1):
            raise ValueError(f"rerank_top must be an int >= 1 (candidates re-ranked per query), got {rerank_top!r}")

    def rank(self, texts: Sequence[str] | str, k: int = 10, *, vectors: Any = None, filter: Any = None,
             rescore: bool | None = None, rescore_factor: int = 4, hybrid: bool = False, first_stage: str = "int8",
             oversample: int | str = "auto", fusion: str | None = None, alpha: float | None = None,
             candidates: int | None = None, batch_size: int = 32, prompt_name: str | None = None,
             rerank: bool = False, rerank_top: int | None = None):
        """The search as arrays: (scores float32 [q, k'], ids int64 [q, k']), k' = min(k, len(index)),
        best first, ties to the lower id, short rows padded with (-inf, -1).

        Args:
            texts: the q query texts (one str counts as q = 1).
            k: results per query.
            vectors: the queries already embedded, float32 [q, d] (e.g. by a server's batcher);
                None: embedded here with the encoder.
            filter: only documents that pass it (fastret.search.filters: a dict, its JSON, a `Filter`).
            rescore: re-rank with the float16 copies (`Index.search`); None: off, except in a hybrid
                search, whose dense side rescores when the index keeps float16 copies.
            rescore_factor: candidates per result kept for rescoring (dense searches).
            hybrid: fuse with BM25 (fastret.search.hybrid); `fusion` ("rrf" or "weighted"), `alpha` and
                `candidates` default to fastret.search.hybrid's, chosen on NFCorpus dev.
            first_stage, oversample: "int8", or "binary" with its candidates per result ("auto" or an
                int, as `Index.search` takes them).
            batch_size, prompt_name: how the encoder embeds the queries (and the reranker's batches).
            rerank: score the dense (or hybrid) top `rerank_top` (default DEFAULT_RERANK_TOP, at
                least k) again with the reranker, over each document's stored text
                (`rerank_fields`), and keep its top k: scores are then the reranker's (the sigmoid
                of its logit), ties in the first stage's order.

        Raises:
            ValueError, TypeError: as `check`, before any query is embedded; texts that are not str,
                vectors of another count than texts, or no encoder and no vectors.
        """
        if self.searchable is None:
            raise ValueError("this TextSearch has no index: only rank_bm25 searches it")
        spec = self.check(k, filter=filter, rescore=rescore, rescore_factor=rescore_factor, hybrid=hybrid,
                          first_stage=first_stage, oversample=oversample, fusion=fusion, alpha=alpha,
                          candidates=candidates, rerank=rerank, rerank_top=rerank_top)
        texts = [texts] if isinstance(texts, str) else list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{position}] is {type(text).__name__}; query texts are str")
        if vectors is None:
            if self.encoder is None:
                raise ValueError("this TextSearch has no encoder: pass the queries' vectors, or open it with one")
            vectors = self.encoder.encode(texts, batch_size=batch_size, prompt_name=prompt_name)
        if len(vectors) != len(texts):
            raise ValueError(f"{len(texts)} query texts but {len(vectors)} query vectors")
        k = min(int(k), len(self.searchable))
        depth = min(max(k, int(rerank_top or DEFAULT_RERANK_TOP)), len(self.searchable)) if rerank else k
        stage = {"filter": spec, "first_stage": first_stage, "oversample": oversample}
        if hybrid:
            found = HybridSearcher(self.searchable, self.lexical()).search(
                texts, vectors, depth, method=fusion or fusion_rules.DEFAULT_METHOD,
                alpha=fusion_rules.DEFAULT_ALPHA if alpha is None else alpha,
                candidates=max(depth, candidates or fusion_rules.DEFAULT_CANDIDATES), rescore=rescore, **stage)
        else:
            found = self.searchable.search(vectors, depth, rescore=bool(rescore), rescore_factor=rescore_factor,
                                           **stage)
        return self._reranked(texts, *found, k, batch_size) if rerank else found

    def _reranked(self, texts: list[str], scores: np.ndarray, ids: np.ndarray, k: int,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """The first stage's candidates scored by the reranker over their stored text, the top k kept."""
        found = ids >= 0
        stored = self.searchable.fields(ids[found], names=list(self.rerank_fields))
        documents = [" ".join(str(row[name]) for name in self.rerank_fields if row.get(name) not in (None, ""))
                     for row in stored]
        if documents and not any(documents):
            raise ValueError(f"re-ranking reads each candidate's stored text (fields {', '.join(self.rerank_fields)}), "
                             "and these documents have none: encode the corpus with --fields "
                             "(encode_corpus(..., fields=True)), or name the fields that hold it (rerank_fields)")
        queries = np.repeat(np.arange(len(texts)), found.sum(axis=1))
        pair_scores = self.reranker.predict([(texts[q], d) for q, d in zip(queries.tolist(), documents)],
                                            batch_size=batch_size) if documents else np.empty(0, np.float32)
        out_scores = np.full((len(texts), k), -np.inf, np.float32)
        out_ids = np.full((len(texts), k), -1, np.int64)
        start = 0
        for q, row_found in enumerate(found):
            count = int(row_found.sum())
            mine = pair_scores[start:start + count]
            order = np.argsort(-mine, kind="stable")[:k]  # ties keep the first stage's order
            out_scores[q, : len(order)] = mine[order]
            out_ids[q, : len(order)] = ids[q][row_found][order]
            start += count
        return out_scores, out_ids

    def rank_bm25(self, texts: Sequence[str] | str, k: int = 10, *, filter: Any = None):
        """BM25 alone (the lexical baseline of evaluations): (scores float32 [q, k], ids int64 [q, k]),
        best first, documents sharing no term with a query left out (padded with -inf, -1); with
        `filter`, only the documents the index says pass it.

        Raises:
            ValueError, TypeError: k that is not an int >= 1, a bad filter, no BM25 index, texts that
                are not str.
        """
        spec = self.check(k, filter=filter, hybrid=True)
        if spec is not None and self.searchable is None:
            raise ValueError("a filter needs the index its fields live in: open this TextSearch with one")
        allowed = None if spec is None else self.searchable.contains(self.lexical().ids, filter=spec)
        return self.lexical().search(texts, int(k), allowed=allowed)

    def hits(self, scores: np.ndarray, ids: np.ndarray, fields: Sequence[str] | None = None) -> list[list[Hit]]:
        """`rank`'s arrays as hits, one list per query (padding left out), with the stored fields
        named in `fields` (None: none)."""
        found = ids >= 0
        index = self.searchable
        names = index.documents(ids[found]).tolist() if index.has_documents else ids[found].tolist()
        stored = None if fields is None else index.fields(ids[found], names=list(fields))
        results, position = [], 0
        for row_found, row_scores in zip(found, scores):
            row = []
            for score in row_scores[row_found].tolist():
                row.append(Hit(names[position], score, None if stored is None else stored[position]))
                position += 1
            results.append(row)
        return results

    def search(self, texts: Sequence[str] | str, k: int = 10, *, fields: Sequence[str] | None = None,
               **options) -> list[list[Hit]]:
        """The k best documents of each query text as `Hit`s, best first (fewer where a filter or a
        hybrid search finds fewer). `fields`: the stored fields to return with each hit; `options`:
        as `rank` (filter, rescore, hybrid, first_stage, oversample, vectors, ...).

        Raises:
            ValueError, TypeError: as `rank`, before any query is embedded.
        """
        if fields is not None and (isinstance(fields, str) or not all(isinstance(n, str) for n in fields)):
            raise TypeError(f"fields must be a list of stored field names, got {fields!r:.80}")
        return self.hits(*self.rank(texts, k, **options), fields=fields)
