"""Stream a corpus through an `Encoder` into a sharded store: bounded memory, resumable, multi-rank.

Shard k is documents [k * shard_size, (k + 1) * shard_size) in corpus order. A run reads the corpus
once, encodes the shards that are not finished yet (under `torchrun`, rank r takes shards
k % world_size == r), and writes each shard atomically (store.py). So that the model never waits
for the files, shard k + 1 is read in a background thread while shard k is encoded, and shard k is
written by a writer thread while shard k + 1 is encoded (one write at a time, in shard order; an
error in it stops the run before the next shard is handed over). Memory holds a few shards' texts
(reading, encoding) and two shards' embeddings (encoding, writing). Killed and restarted with the
same settings, a run skips finished shards and ends with the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import collections.abc
import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..corpus import count_documents, iter_document_records, iter_documents, stored_fields
from ..search.lexical import LexicalIndex
from ..storage import segment_files
from ..storage.atomic import remove_temporaries_in
from ..storage.fields import StoredFields
from ..storage.store import Store, StoreError, finished_shards, read_manifest, shard_name, write_manifest, write_shard
from ..storage.writer_lock import writer_lock
from .batches import prefetch, warn_about_inputs

DEFAULT_SHARD_SIZE = 65536


def encode_corpus(encoder, corpus: Any, out_dir: str | os.PathLike, *, batch_size: int = 32,
                  shard_size: int = DEFAULT_SHARD_SIZE, store_float16: bool = False,
                  max_tokens_per_batch: int | None = None, prompt: str | None = None,
                  prompt_name: str | None = None, show_progress_bar: bool = True, bm25: bool = False,
                  fields: bool | Sequence[str] | None = None) -> Store:
    """Embed a corpus into `out_dir` (see `Encoder.encode_corpus`, which calls this)."""
    if bm25 and isinstance(corpus, collections.abc.Iterator):
        raise ValueError("bm25=True reads the corpus a second time: pass a path or a list, not an iterator")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an int >= 1, got {shard_size!r}")
    names = _field_names(fields)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries_in(out_dir)  # what killed runs left behind
    prefix = encoder.prompt_prefix(prompt, prompt_name)
    settings = {
        "model": str(encoder.model_dir), "dim": encoder.dim, "pooling": encoder.pooling,
        "normalize": encoder.normalize, "max_length": encoder.max_length, "dtype": str(encoder.dtype),
        "prompt": prefix, "shard_size": shard_size, "float16": bool(store_float16),
        "corpus": _describe(corpus),
        **({"fields": True if names is None else names} if fields else {}),
    }
    rank, world = _join_process_group()
    # rank 0 holds the store's writer lock for the whole run (a second `fastret encode` of the same
    # directory, or an Index.save into it, waits and then fails naming it); under torchrun the other
    # ranks write their own shards beside it
    with writer_lock(out_dir, timeout=0) if rank == 0 else contextlib.nullcontext():
        _check_resumable(out_dir, settings)
        if rank == 0:
            write_manifest(out_dir, settings, complete=False)
        _encode_shards(encoder, corpus, out_dir, settings, names, prefix, batch_size, shard_size, store_float16,
                       max_tokens_per_batch, show_progress_bar, rank, world)
        _barrier(world)
        if rank == 0:
            shards = finished_shards(out_dir)
            if shards != list(range(len(shards))):
                raise StoreError(f"{out_dir}: shards {sorted(set(range(max(shards) + 1)) - set(shards))} are missing")
            write_manifest(out_dir, settings, complete=True)
            if bm25 and not read_manifest(out_dir).get("lexical"):
                build_store_bm25(out_dir, corpus, show_progress_bar=show_progress_bar)
        _barrier(world)
    return Store.open(out_dir)


def _encode_shards(encoder, corpus: Any, out_dir: Path, settings: dict, names: list[str] | None, prefix: str | None,
                   batch_size: int, shard_size: int, store_float16: bool, max_tokens_per_batch: int | None,
                   show_progress_bar: bool, rank: int, world: int) -> None:
    """Encode and write this rank's unfinished shards; finish the sidecars of those a killed run left."""
    done = set(finished_shards(out_dir))
    fields = "fields" in settings

    from tqdm.auto import tqdm

    total = count_documents(corpus) if show_progress_bar and rank == 0 else None
    input_stats: dict = {}

    def write(number: int, documents: list, mine: bool, embedded) -> None:
        """Shard `number`'s files (run by the writer thread, one shard at a time, in order)."""
        if mine:
            vectors, codes, scales = embedded
            write_shard(out_dir, number, [doc_id for doc_id, _, _ in documents], number * shard_size, codes.numpy(),
                        scales.numpy(), vectors.numpy().astype(np.float16) if store_float16 else None)
        shard = out_dir / f"{shard_name(number)}.frt"
        # a shard is finished when its .frt exists (written with its sign bits); its fields follow
        # it, and a run killed in between writes them when it resumes (as the bits of a shard
        # written by an older fastret, which wrote them after it)
        if not mine and number % world == rank and not segment_files.has_sidecar(shard, segment_files.BITS):
            segment_files.add_bits(shard)
        if fields and number % world == rank and (mine or not segment_files.has_sidecar(shard, segment_files.FIELDS)):
            records = [stored_fields(record, names) for _, _, record in documents]
            segment_files.add_fields(shard, StoredFields.from_records(records, f"the fields of shard {number}"))
        if mine and world == 1:
            write_manifest(out_dir, settings, complete=False)

    reading = prefetch(enumerate(_chunks(iter_document_records(corpus, encoder.text_pairs), shard_size)), depth=1)
    writing: Future | None = None  # the previous shard's write
    with tqdm(total=total, unit="doc", desc="encode corpus", disable=not show_progress_bar or rank != 0) as bar, \
            contextlib.closing(reading) as shards, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastret-shard-writer") as writer:
        for number, documents in shards:
            mine = number % world == rank and number not in done
            embedded = None
            if mine:
                inputs = [encoder.prepare(text, i, prefix) for i, (_, text, _) in enumerate(documents)]
                embedded = encoder.embed(inputs, batch_size, encoder.normalize, True, max_tokens_per_batch,
                                         input_stats=input_stats)
            if writing is not None:
                writing.result()  # raises the previous write's error here, before handing this shard over
            writing = writer.submit(write, number, documents, mine, embedded)
            bar.update(len(documents))
        if writing is not None:
            writing.result()
    warn_about_inputs(input_stats, encoder.max_length)


def _field_names(fields: Any) -> list[str] | None:
    """The corpus keys `fields` asks to store: None for every key (True or None), else the list.

    Raises:
        TypeError: `fields` that is neither a bool nor a list of str.
    """
    if fields is None or isinstance(fields, bool):
        return None
    if isinstance(fields, str) or not all(isinstance(name, str) for name in fields):
        raise TypeError(f"fields must be True (every key of the corpus records) or a list of keys, got {fields!r:.80}")
    return list(fields)


def build_store_bm25(directory: str | os.PathLike, corpus: Any, show_progress_bar: bool = True) -> tuple[Path, int]:
    """Build the BM25 index of a finished store from the corpus it was encoded from, and make it
    the store's current one (for hybrid search).

    Args:
        directory: the store.
        corpus: what `encode_corpus` read (a BEIR file or directory, or an iterable of documents).
        show_progress_bar: bm25s's progress bars.

    Returns:
        (the lexical index's folder in the store, how many documents it holds).

    Raises:
        StoreError: `directory` is not a finished store.
        ValueError: the corpus does not hold the store's documents in the store's order.
    """
    documents = list(iter_documents(corpus))
    expected = Store.open(directory).doc_ids()
    if [doc_id for doc_id, _ in documents] != expected:
        raise ValueError(f"{_describe(corpus)} does not hold the documents of {directory} in the same order "
                         f"({len(documents)} documents there, {len(expected)} in the store); pass the corpus "
                         "the store was encoded from")
    texts = [text for _, text in documents]
    return LexicalIndex.build(texts, show_progress_bar=show_progress_bar).save(directory), len(texts)


@dataclass(frozen=True)
class Torchrun:
    """This process's place in a `torchrun` launch (rank 0 of 1 without one)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def cuda_device(self) -> str:
        """The CUDA device of this rank: cuda:LOCAL_RANK under torchrun, else cuda."""
        return f"cuda:{self.local_rank}" if self.world_size > 1 else "cuda"


def torchrun_env() -> Torchrun:
    """Rank, world size and local rank from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Raises:
        ValueError: a variable that is not a whole number, or a rank outside the world.
    """
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(name)
        try:
            values[name] = default if text is None else int(text)
        except ValueError:
            raise ValueError(f"environment variable {name}={text!r} is not a whole number; torchrun sets it, "
                             "unset it outside torchrun") from None
    if values["WORLD_SIZE"] < 1 or not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ValueError(f"RANK={values['RANK']} and WORLD_SIZE={values['WORLD_SIZE']}: need 0 <= RANK < WORLD_SIZE")
    return Torchrun(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


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


def _join_process_group() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, joining the process group if needed."""
    env = torchrun_env()
    if env.world_size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return env.rank, env.world_size


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
