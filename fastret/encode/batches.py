"""Encode batches: one call's texts in length-sorted batches under a token budget, collated in a
background thread. (`dynamic_batching` is the server's queue, where concurrent requests share a call.)

Sorting by token length makes each batch's texts nearly equal in length, so padding is near
zero; a token budget (texts x padded length) instead of a fixed count lets short texts travel in
larger batches while bounding memory for long ones.

Two layouts: `collate` pads the texts to [B, L] with a mask; `collate_packed` puts them back to
back, [N] tokens with no padding, delimited by cu_seqlens (`PackedBatch`, for
`fastret.encode.packed`). Everything a packed forward needs to know on the host (the longest
sequence, each token's position) is computed here, so the forward never reads device memory.
"""

from __future__ import annotations

import itertools
import queue
import threading
import warnings
from dataclasses import dataclass, fields, replace
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def plan_batches(lengths: Sequence[int], max_texts: int, max_tokens: int, padded: bool = True) -> list[np.ndarray]:
    """Split texts into batches, longest first.

    Args:
        lengths: token count of each text.
        max_texts: most texts in one batch.
        max_tokens: most tokens in one batch: padded tokens (texts x longest length), or with
            padded=False the tokens themselves (packed batches hold no padding); a text longer
            than the budget still gets a batch of its own.
        padded: count padded tokens (True) or real ones (False).

    Returns:
        Index arrays into `lengths`, one per batch, covering every text once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    if not padded:
        ends = np.cumsum(np.maximum(lengths[order], 1))  # tokens of the first i + 1 texts, longest first
    while start < len(order):
        if padded:
            longest = max(1, int(lengths[order[start]]))
            size = max(1, min(max_texts, max_tokens // longest))
        else:
            before = int(ends[start - 1]) if start else 0
            fit = int(np.searchsorted(ends, before + max_tokens, side="right")) - start
            size = max(1, min(max_texts, fit))
        batches.append(order[start : start + size])
        start += size
    return batches


def collate(token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None,
            pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded int64 tensors: input_ids, attention_mask (and token_type_ids) [B, L]."""
    longest = max(len(ids) for ids in token_ids)
    input_ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
    if type_ids is not None:
        types = np.zeros((len(token_ids), longest), dtype=np.int64)
        for row, ids in enumerate(type_ids):
            types[row, : len(ids)] = ids
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


@dataclass(frozen=True)
class PackedBatch:
    """B texts back to back, N tokens in all, no padding (see `collate_packed`).

    Attributes:
        input_ids: int64 [N], the texts' tokens one after another.
        position_ids: int64 [N], each token's position in its own text (0, 1, ..., 0, 1, ...).
        token_type_ids: int64 [N], or None for models without them.
        cu_seqlens: int32 [B + 1], text b is tokens cu_seqlens[b] .. cu_seqlens[b + 1] - 1.
        lengths: int64 [B], the texts' token counts.
        padded_index: int64 [N], each token's row in the [B, max_seqlen] padded layout
            (b * max_seqlen + position), for attention that pads (`fastret.encode.varlen_attention`).
        max_seqlen: the longest text's token count (a host int: kernels size their grids with it).
        min_seqlen: the shortest text's token count (a host int).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    token_type_ids: torch.Tensor | None
    cu_seqlens: torch.Tensor
    lengths: torch.Tensor
    padded_index: torch.Tensor
    max_seqlen: int
    min_seqlen: int

    @property
    def num_texts(self) -> int:
        """B, the texts in the batch."""
        return int(self.lengths.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "PackedBatch":
        """The same batch with every tensor on `device` (asynchronous from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedBatch":
        """The same batch in pinned host memory (so that `to(cuda, non_blocking=True)` overlaps)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, fn) -> "PackedBatch":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})


def collate_packed(token_ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None) -> PackedBatch:
    """Texts' token ids back to back, with positions and cu_seqlens: a `PackedBatch` of CPU tensors.

    Raises:
        ValueError: no texts.
    """
    if not token_ids:
        raise ValueError("collate_packed needs at least one text")
    lengths = np.fromiter((len(ids) for ids in token_ids), dtype=np.int64, count=len(token_ids))
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    total, longest = int(cu[-1]), int(lengths.max())
    starts = np.repeat(cu[:-1], lengths)  # [N] the first token of each token's text
    positions = np.arange(total, dtype=np.int64) - starts
    texts = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)

    def flat(lists):
        return torch.from_numpy(np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=total))

    return PackedBatch(
        input_ids=flat(token_ids),
        position_ids=torch.from_numpy(positions),
        token_type_ids=None if type_ids is None else flat(type_ids),
        cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
        lengths=torch.from_numpy(lengths),
        padded_index=torch.from_numpy(texts * longest + positions),
        max_seqlen=longest,
        min_seqlen=int(lengths.min()),
    )


_DONE = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate `items` in a background thread, keeping up to `depth` ready ahead of the consumer.

    Exceptions raised while producing are re-raised in the consumer. Stopping early (break, or
    an exception in the consumer) stops the producer at its next item.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        """Hand `entry` over unless the consumer has stopped; False once it has."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as error:  # handed to the consumer
            put((_DONE, error))

    worker = threading.Thread(target=produce, name="fastret-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def warn_about_inputs(stats: dict, max_length: int) -> None:
    """One warning for truncated inputs and one for empty ones, if any."""
    if stats.get("truncated"):
        warnings.warn(f"{stats['truncated']} of {stats['texts']} texts were longer than max_length={max_length} "
                      "tokens and were truncated", stacklevel=4)
    if stats.get("empty"):
        warnings.warn(f"{stats['empty']} of {stats['texts']} texts are empty or whitespace; they are encoded "
                      "as-is (as sentence-transformers does)", stacklevel=4)
