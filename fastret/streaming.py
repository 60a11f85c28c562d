"""Stream a corpus through an `Encoder` into a sharded store: bounded memory, resumable, multi-rank.

Shard k is documents [k * shard_size, (k + 1) * shard_size) in corpus order. A run reads the corpus
once, encodes the shards that are not finished yet (under `torchrun`, rank r takes shards
k % world_size == r), and writes each shard atomically (store.py). Memory holds one shard's texts
and embeddings. Killed and restarted with the same settings, a run skips finished shards and ends
with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import collections.abc
import os
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .atomic import remove_stale_temporaries_in
from .encode_batches import warn_about_inputs
from .corpus import count_documents, document_text, iter_documents
from .lexical import LexicalIndex
from .store import Store, StoreError, finished_shards, read_manifest, write_manifest, write_shard

DEFAULT_SHARD_SIZE = 65536


def encode_corpus(encoder, corpus: Any, out_dir: str | os.PathLike, *, batch_size: int = 32,
                  shard_size: int = DEFAULT_SHARD_SIZE, store_float16: bool = False,
                  max_tokens_per_batch: int | None = None, prompt: str | None = None,
                  prompt_name: str | None = None, show_progress_bar: bool = True, bm25: bool = False) -> Store:
    """Embed a corpus into `out_dir` (see `Encoder.encode_corpus`, which calls this)."""
    if bm25 and isinstance(corpus, collections.abc.Iterator):
        raise ValueError("bm25=True reads the corpus a second time: pass a path or a list, not an iterator")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an int >= 1, got {shard_size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries_in(out_dir)  # what killed runs left behind
    prefix = encoder.prompt_prefix(prompt, prompt_name)
    settings = {
        "model": str(encoder.model_dir), "dim": encoder.dim, "pooling": encoder.pooling,
        "normalize": encoder.normalize, "max_length": encoder.max_length, "dtype": str(encoder.dtype),
        "prompt": prefix, "shard_size": shard_size, "float16": bool(store_float16),
        "corpus": _describe(corpus),
    }
    rank, world = _distributed_rank()
    _check_resumable(out_dir, settings)
    if rank == 0:
        write_manifest(out_dir, settings, complete=False)
    done = set(finished_shards(out_dir))

    from tqdm.auto import tqdm

    total = count_documents(corpus) if show_progress_bar and rank == 0 else None
    input_stats: dict = {}
    with tqdm(total=total, unit="doc", desc="encode corpus", disable=not show_progress_bar or rank != 0) as bar:
        for number, documents in enumerate(_chunks(iter_documents(corpus, encoder.text_pairs), shard_size)):
            mine = number % world == rank and number not in done
            if mine:
                ids = [doc_id for doc_id, _ in documents]
                inputs = [encoder.prepare(text, i, prefix) for i, (_, text) in enumerate(documents)]
                vectors, codes, scales = encoder.embed(inputs, batch_size, encoder.normalize, True,
                                                       max_tokens_per_batch, input_stats=input_stats)
                write_shard(out_dir, number, ids, number * shard_size, codes.numpy(), scales.numpy(),
                            vectors.numpy().astype(np.float16) if store_float16 else None)
                if world == 1:
                    write_manifest(out_dir, settings, complete=False)
            bar.update(len(documents))

    warn_about_inputs(input_stats, encoder.max_length)
    _barrier(world)
    if rank == 0:
        shards = finished_shards(out_dir)
        if shards != list(range(len(shards))):
            raise StoreError(f"{out_dir}: shards {sorted(set(range(max(shards) + 1)) - set(shards))} are missing")
        write_manifest(out_dir, settings, complete=True)
        if bm25 and not read_manifest(out_dir).get("lexical"):
            documents = (document_text(*text) if isinstance(text, tuple) else text
                         for _, text in iter_documents(corpus, encoder.text_pairs))
            LexicalIndex.build(list(documents), show_progress_bar=show_progress_bar).save(out_dir)
    _barrier(world)
    return Store.open(out_dir)


def _check_resumable(out_dir: Path, settings: dict) -> None:
    """A directory with a manifest must have been made with the same settings."""
    if not (out_dir / "manifest.json").exists():
        if finished_shards(out_dir):
            raise StoreError(f"{out_dir} holds shards but no manifest; use an empty directory")
        return
    manifest = read_manifest(out_dir)
    changed = sorted(key for key, value in settings.items() if manifest.get(key) != value)
    if changed:
        details = "; ".join(f"{key}: {manifest.get(key)!r} there, {settings[key]!r} now" for key in changed)
        raise StoreError(f"{out_dir} holds a store made with other settings ({details}); "
                         "resume with the same settings or use an empty directory")


def _describe(corpus: Any) -> str:
    """How the corpus is named in the manifest (a path's name, or the kind of iterable)."""
    if isinstance(corpus, (str, os.PathLike)):
        return Path(corpus).name
    return f"<{type(corpus).__name__}>"


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(items, size)):
        yield chunk


def _distributed_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, joining the process group if needed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
