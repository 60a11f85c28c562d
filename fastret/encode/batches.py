"""Encode batches: one call's texts in length-sorted batches under a token budget, collated in a
background thread. (`dynamic_batching` is the server's queue, where concurrent requests share a call.)

Sorting by token length makes each batch's texts nearly equal in length, so padding is near
zero; a token budget (texts x padded length) instead of a fixed count lets short texts travel in
larger batches while bounding memory for long ones.
"""

from __future__ import annotations

import queue
import threading
import warnings
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def plan_batches(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[np.ndarray]:
    """Split texts into batches, longest first.

    Args:
        lengths: token count of each text.
        max_texts: most texts in one batch.
        max_tokens: most padded tokens (texts x longest length) in one batch; a text longer than
            the budget still gets a batch of its own.

    Returns:
        Index arrays into `lengths`, one per batch, covering every text once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))
        size = max(1, min(max_texts, max_tokens // longest))
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
