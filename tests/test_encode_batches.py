import threading
import time
import warnings

import numpy as np
import pytest
import torch

from fastret.encode.batches import collate, collate_packed, plan_batches, prefetch, warn_about_inputs


def test_batches_cover_every_text_once_longest_first_within_the_budget():
    lengths = [5, 1, 9, 3, 3, 7, 2, 40]
    batches = plan_batches(lengths, max_texts=3, max_tokens=16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert batches[0].tolist() == [7]  # longer than the budget: a batch of its own
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 16)
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_packed_batches_count_real_tokens():
    lengths = [5, 1, 9, 3, 3, 7, 2, 40]
    batches = plan_batches(lengths, max_texts=3, max_tokens=16, padded=False)
    assert [b.tolist() for b in batches] == [[7], [2, 5], [0, 3, 4], [6, 1]]  # 40 alone; 9 + 7; 5 + 3 + 3; 2 + 1
    assert [b.tolist() for b in plan_batches(lengths, 10, 16, padded=False)][2] == [0, 3, 4, 6, 1]
    assert [len(b) for b in plan_batches([0, 0, 0], 10, 2, padded=False)] == [2, 1]  # an empty text counts as 1


def test_collate_packed_puts_texts_back_to_back_with_positions():
    batch = collate_packed([[1, 2, 3], [4], [5, 6]], [[0, 0, 1], [0], [0, 1]])
    assert batch.input_ids.tolist() == [1, 2, 3, 4, 5, 6]
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.token_type_ids.tolist() == [0, 0, 1, 0, 0, 1]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == torch.int32
    assert batch.lengths.tolist() == [3, 1, 2] and (batch.max_seqlen, batch.min_seqlen, batch.num_texts) == (3, 1, 3)
    assert batch.padded_index.tolist() == [0, 1, 2, 3, 6, 7]  # rows of the [3, 3] padded layout
    assert collate_packed([[7]], None).token_type_ids is None
    moved = batch.to("cpu")
    assert moved.max_seqlen == 3 and torch.equal(moved.input_ids, batch.input_ids)
    with pytest.raises(ValueError, match="at least one text"):
        collate_packed([], None)


def test_collate_pads_on_the_right_with_a_mask_and_type_ids():
    batch = collate([[1, 2, 3], [4]], [[0, 0, 1], [0]], pad_id=9)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert "token_type_ids" not in collate([[1]], None, pad_id=0)


def test_prefetch_keeps_order_passes_errors_on_and_stops_its_producer_early():
    assert list(prefetch(range(10))) == list(range(10))

    def failing():
        yield 1
        raise RuntimeError("producer broke")

    with pytest.raises(RuntimeError, match="producer broke"):
        list(prefetch(failing()))
    produced = []

    def endless():
        for i in range(10**6):
            produced.append(i)
            yield i

    for item in prefetch(endless(), depth=2):
        if item == 3:
            break
    count = len(produced)  # the producer has stopped once the loop is left
    time.sleep(0.2)
    assert len(produced) == count < 10
    assert not any(t.name == "fastret-prefetch" and t.is_alive() for t in threading.enumerate())


def test_one_warning_each_for_truncated_and_empty_inputs():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_about_inputs({"texts": 5, "truncated": 2, "empty": 1}, max_length=8)
        warn_about_inputs({"texts": 5}, max_length=8)
    assert [str(w.message).split(" texts")[0] for w in caught] == ["2 of 5", "1 of 5"]
