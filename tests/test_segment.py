import numpy as np
import pytest

from fastret import _core
from fastret.storage.segment import Segment, SegmentBuilder, bitmap


def segment_of(ids, dim=4):
    n = len(ids)
    return Segment(np.zeros((n, dim), np.int8), np.ones(n, np.float32), np.asarray(ids, np.int64))


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 200])
def test_bitmap_bits_are_rows(n, rng):
    mask = rng.random(n) < 0.3
    words = bitmap(mask)
    assert words.dtype == np.uint64 and len(words) == -(-n // 64)
    for row in range(n):
        assert bool((int(words[row // 64]) >> (row % 64)) & 1) == mask[row]


@pytest.mark.parametrize("ids", [[5, 1, 5, 9, 3, 1], [1, 2, 3, 4], [7, 7, 7]])
def test_rows_of_finds_every_row_of_each_id(ids):
    segment = segment_of(ids)
    for wanted in ([1], [5, 9], [100], [7, 1], []):
        expected = [row for row, value in enumerate(ids) if value in wanted]
        assert segment.rows_of(np.array(wanted, np.int64)).tolist() == expected


def test_with_deleted_makes_a_new_segment_and_counts_once(rng):
    segment = segment_of(list(range(100)))
    first = segment.with_deleted(np.array([3, 70, 70]))
    assert first is not segment and segment.deleted is None and segment.live_count == 100
    assert first.deleted_count == 2 and first.is_deleted(np.array([3, 4, 70])).tolist() == [True, False, True]
    assert first.with_deleted(np.array([3])) is first
    assert first.live_rows().tolist() == [r for r in range(100) if r not in (3, 70)]


def test_builder_snapshots_stay_valid_while_appending_and_deleting():
    builder = SegmentBuilder(2, store_float16=False)
    builder.append(np.ones((3, 2), np.int8), np.full(3, 0.5, np.float32), np.arange(3), None)
    before = builder.snapshot()
    for start in range(3, 300, 7):  # grows the arrays several times
        builder.append(np.full((7, 2), 2, np.int8), np.ones(7, np.float32), np.arange(start, start + 7), None)
    builder.delete_rows(np.array([0, 2, 250]))
    after = builder.snapshot()
    assert len(before) == 3 and before.deleted is None and before.codes.tolist() == [[1, 1]] * 3
    assert len(after) == 304 and after.deleted_count == 3 and after.live_count == 301
    assert after.is_deleted(np.array([0, 1, 2, 250, 303])).tolist() == [True, False, True, True, False]
    assert after.max_scale() == 1.0


def test_core_view_hands_the_core_a_bitmap_or_picked_rows(rng):
    codes = rng.integers(-127, 128, (70, 8)).astype(np.int8)
    segment = Segment(codes, rng.random(70).astype(np.float32), np.arange(100, 170, dtype=np.int64)
                      ).with_deleted(np.array([3], np.int64))
    assert segment.core_view()[3] is segment.deleted and len(segment.core_view()) == 4
    allowed = np.zeros(70, bool)
    allowed[[3, 4, 65]] = True
    skipped = np.unpackbits(segment.core_view(allowed)[3].view(np.uint8), bitorder="little")[:70].astype(bool)
    assert np.flatnonzero(~skipped).tolist() == [4, 65]  # deleted | not allowed
    rows = np.array([3, 4, 65], np.int64)  # row 3 is deleted: still skipped
    view = segment.core_view(rows)
    assert view[3] is segment.deleted and view[4] is rows
    _, found = _core.topk_int8(codes[:1], np.ones(1, np.float32), [view], 5)
    assert sorted(found[0, :2].tolist()) == [4, 65] and found[0, 2:].tolist() == [-1, -1, -1]
