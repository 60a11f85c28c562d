import threading
import time
import warnings

import numpy as np
import pytest

from fastret.encode.batches import collate, plan_batches, prefetch, warn_about_inputs


def test_batches_cover_every_text_once_longest_first_within_the_budget():
    lengths = [5, 1, 9, 3, 3, 7, 2, 40]
    batches = plan_batches(lengths, max_texts=3, max_tokens=16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert batches[0].tolist() == [7]  # longer than the budget: a batch of its own
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 16)
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


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
