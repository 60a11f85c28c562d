"""`LexicalIndex`: BM25 (bm25s: Lucene-style scoring, English stopwords, no stemming) over the same
documents as the vectors, named by the same int64 ids, saved inside a store.

    store/
      lexical-<hex>/         bm25s's files (vocabulary, sparse score matrix) + ids.npy
      manifest.json          "lexical": "lexical-<hex>" names the current one

A lexical index is written into a fresh folder and becomes current when the manifest names it (the
manifest is replaced atomically: a commit of the store, under its writer lock); older folders are
removed afterwards, so a crash leaves either the old or the new lexical index, never half of one,
and `fastret clean` removes a folder that a killed build left.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checks import int64_ids
from ..storage import store
from ..storage.store import LEXICAL_PREFIX
from ..storage.writer_lock import writer_lock
from .rules import EMPTY_ID, pad, take_top


def _sync_folder(folder: Path) -> None:
    """Flush every file of `folder` to disk before the manifest names it."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


class LexicalIndex:
    """BM25 over documents whose ids are int64 (for a store: the rows, as the vectors' ids)."""

    def __init__(self, retriever, ids: np.ndarray):
        self._retriever = retriever
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, documents: Sequence[str], ids=None, show_progress_bar: bool = False) -> "LexicalIndex":
        """Index `documents` (str each); ids default to 0..n-1.

        Raises:
            TypeError: a document that is not a str, or ids that are not integers.
            ValueError: no documents, or ids of another length.
        """
        import bm25s

        documents = list(documents)
        if not documents:
            raise ValueError("a lexical index needs at least one document")
        for position, text in enumerate(documents):
            if not isinstance(text, str):
                raise TypeError(f"documents[{position}] is {type(text).__name__}; expected a str")
        ids = np.arange(len(documents), dtype=np.int64) if ids is None else int64_ids(ids, len(documents))
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(documents, show_progress=show_progress_bar), show_progress=show_progress_bar)
        return cls(retriever, ids)

    def search(self, queries: Sequence[str], k: int, *,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-k per query: (scores float32 [q, k], ids int64 [q, k]), best first, ties to the
        lower id. Documents that share no term with the query are left out: a short list is padded
        with score -inf and id -1. `allowed` (bool, one per document of `ids`) limits the search
        to those documents (a filter: the top k among them, not a post-filter).

        Raises:
            TypeError: a query that is not a str.
            ValueError: k < 1.
        """
        import bm25s

        queries = [queries] if isinstance(queries, str) else list(queries)
        for position, text in enumerate(queries):
            if not isinstance(text, str):
                raise TypeError(f"queries[{position}] is {type(text).__name__}; expected a str")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        tokens = bm25s.tokenize(queries, return_ids=False, show_progress=False)
        depth = min(len(self.ids), int(k) + 64)  # room to re-order ties at the cut by id
        if allowed is not None and np.shape(allowed) != self.ids.shape:
            raise ValueError(f"allowed must be bool [{len(self.ids)}] (one per document), got {np.shape(allowed)}")
        mask = None if allowed is None else np.asarray(allowed, np.float32)
        rows, scores = self._retriever.retrieve(tokens, k=depth, show_progress=False, n_threads=1, weight_mask=mask)
        matched = np.asarray(scores) > 0
        found = np.where(matched, np.asarray(scores, np.float32), np.float32(-np.inf))
        ids = np.where(matched, self.ids[np.asarray(rows)], EMPTY_ID)
        return pad(*take_top(int(k), found, ids), int(k))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write into a new folder of the store `directory` and make it the current one (holding
        the store's writer lock, fastret.storage.writer_lock)."""
        directory = Path(directory)
        with writer_lock(directory):
            store.read_manifest(directory)
            target = directory / f"{LEXICAL_PREFIX}{uuid.uuid4().hex[:12]}"
            target.mkdir(parents=True)
            try:
                self._retriever.save(str(target), show_progress=False)
                np.save(target / "ids.npy", self.ids)
                _sync_folder(target)
                store.set_lexical(directory, target.name)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            for old in directory.glob(f"{LEXICAL_PREFIX}*"):
                if old.name != target.name:
                    shutil.rmtree(old, ignore_errors=True)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "LexicalIndex":
        """The current lexical index of a store.

        Raises:
            StoreError: the store has none (build one with `fastret index --bm25`), or it is damaged.
        """
        import bm25s

        directory = Path(directory)
        name = store.read_manifest(directory).get("lexical")
        if not name:
            raise store.StoreError(f"{directory} has no lexical index; build one with "
                                   f"`fastret index {directory} --bm25 --corpus CORPUS` or encode with --bm25")
        folder = directory / name
        try:
            retriever = bm25s.BM25.load(str(folder), mmap=mmap, show_progress=False)
            ids = np.load(folder / "ids.npy", mmap_mode="r" if mmap else None)
        except (OSError, ValueError, KeyError) as error:
            raise store.StoreError(f"{folder}: the lexical index cannot be read ({error}); rebuild it") from None
        if ids.ndim != 1 or ids.dtype != np.int64 or retriever.scores.get("num_docs", len(ids)) != len(ids):
            raise store.StoreError(f"{folder}: ids.npy does not match the BM25 index; rebuild it")
        return cls(retriever, ids)
