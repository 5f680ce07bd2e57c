"""The sequence tracker alone: pure logic, an injected clock."""

from __future__ import annotations

import pytest

from wsbridge import Message, SequenceTracker
from wsbridge.tracking.sequence import Gap


def m(seq=None, stream=None, id=None):
    return Message("t", {"seq": seq}, seq, id, stream)


def seqs(messages):
    return [x.seq for x in messages]


def test_in_order_messages_pass_and_positions_follow():
    t = SequenceTracker()
    for n in (5, 6, 7):
        assert seqs(t.offer(m(n), 0).ready) == [n]
    assert t.positions() == {None: 7}


def test_duplicates_are_dropped_per_stream():
    t = SequenceTracker({"a": 3})
    assert t.offer(m(3, "a"), 0).duplicate
    assert t.offer(m(1, "a"), 0).duplicate
    assert seqs(t.offer(m(3, "b"), 0).ready) == [3]  # another stream, its own positions
    assert seqs(t.offer(m(4, "a"), 0).ready) == [4]
    assert t.positions() == {"a": 4, "b": 3}


def test_a_gap_holds_later_messages_until_it_is_filled_in_order():
    t = SequenceTracker({None: 1})
    out = t.offer(m(4), 10.0)
    assert out.ready == [] and out.opened == Gap(None, 2, 3)
    assert t.offer(m(5), 10.1).opened is None and t.held == 2
    assert t.offer(m(5), 10.1).duplicate  # held ones are known too
    assert seqs(t.offer(m(2), 10.2).ready) == [2]  # part of the gap
    out = t.offer(m(3), 10.3)
    assert seqs(out.ready) == [3, 4, 5] and out.filled == Gap(None, 2, 5)
    assert t.held == 0 and t.positions() == {None: 5}


def test_reordered_pairs_come_out_in_order():
    t = SequenceTracker({None: 0})
    out = []
    for n in (2, 1, 4, 3, 6, 5):
        out += seqs(t.offer(m(n), 0).ready)
    assert out == [1, 2, 3, 4, 5, 6]


def test_a_gap_that_times_out_is_lost_and_releases_what_it_held():
    t = SequenceTracker({None: 1}, gap_timeout=2.0)
    t.offer(m(3), 0.0)
    t.offer(m(6), 0.5)
    assert t.expire(1.9) == []
    [first] = t.expire(2.0)
    assert first.lost == Gap(None, 2, 2) and seqs(first.ready) == [3]
    assert t.open_gaps() == [Gap(None, 4, 5)]
    assert t.expire(3.9) == []  # the second gap has its own clock, from 2.0
    [second] = t.expire(4.0)
    assert second.lost == Gap(None, 4, 5) and seqs(second.ready) == [6]
    assert t.positions() == {None: 6} and t.held == 0


def test_too_many_held_messages_give_the_gap_up():
    t = SequenceTracker({None: 0}, max_held=3)
    for n in (3, 4, 5):
        assert t.offer(m(n), 0).ready == []
    out = t.offer(m(6), 0)
    assert out.lost == Gap(None, 1, 2) and seqs(out.ready) == [3, 4, 5, 6]
    assert t.held == 0


def test_unsequenced_messages_dedup_by_id_within_a_window():
    t = SequenceTracker(id_window=2)
    assert t.offer(m(id="a"), 0).ready
    assert t.offer(m(id="a"), 0).duplicate
    t.offer(m(id="b"), 0)
    t.offer(m(id="c"), 0)  # "a" leaves the window
    assert t.offer(m(id="a"), 0).ready
    assert t.offer(m(id=["unhashable"]), 0).ready
    assert t.offer(m(), 0).ready and t.offer(m(), 0).ready  # neither seq nor id: always passes


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        SequenceTracker(max_held=0)


def test_at_the_end_of_the_stream_every_open_gap_is_lost_and_what_it_held_released_in_order():
    t = SequenceTracker({"a": 1, "b": 1})
    for n, stream in ((3, "a"), (4, "a"), (7, "a"), (3, "b")):
        t.offer(m(n, stream), 0)
    assert seqs(t.held_messages()) == [3, 4, 7, 3]
    outcomes = t.finish(1.0)
    assert [(o.lost, seqs(o.ready)) for o in outcomes] == [
        (Gap("a", 2, 2), [3, 4]), (Gap("a", 5, 6), [7]), (Gap("b", 2, 2), [3])]
    assert t.held == 0 and t.positions() == {"a": 7, "b": 3} and not t.waiting


def test_held_messages_kept_elsewhere_leave_the_positions_before_their_gaps():
    t = SequenceTracker({None: 1})
    t.offer(m(3), 0)
    t.forget_held()
    assert (t.held, t.held_messages(), t.positions(), t.finish(1.0)) == (0, [], {None: 1}, [])


def test_with_one_counter_across_streams_the_end_loses_every_missing_id():
    t = SequenceTracker(global_seq=True)
    for n in (1, 3, 4, 7):
        t.offer(m(n), 0)
    assert [o.lost for o in t.finish(1.0)] == [Gap(None, 2, 2), Gap(None, 5, 6)]
    assert not t.waiting
