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


# -- numbering that starts again (issue 23, point 1) -------------------------------------------------
def r(seq, text, stream=None, epoch=None):
    """A message whose content (``raw``) is ``text``."""
    return Message("t", {"seq": seq, "text": text}, seq, None, stream, None, f"{seq}:{text}".encode(), epoch)


def test_within_one_connection_a_seq_back_is_a_duplicate_whatever_its_content():
    t = SequenceTracker()
    for n in (1, 2, 3):
        t.offer(r(n, "old"), 0)
    out = t.offer(r(1, "new"), 0)
    assert out.duplicate and out.reset is None and t.positions() == {None: 3}


def test_after_a_reconnect_other_content_at_a_known_seq_is_a_restart_and_the_stream_starts_afresh():
    t = SequenceTracker()
    for n in (1, 2, 3):
        t.offer(r(n, "old", "s"), 0)
    assert t.new_connection(0) == []
    out = t.offer(r(1, "new", "s"), 0)
    assert seqs(out.ready) == [1] and out.reset == ("s", 3, 1, None, "content", True, 0)
    assert seqs(t.offer(r(2, "new", "s"), 0).ready) == [2]  # afresh, in order: no longer judged
    assert t.positions() == {"s": 2} and t.resets == 1


def test_after_a_reconnect_the_same_content_at_a_known_seq_is_a_replay_dropped_as_duplicates():
    t = SequenceTracker()
    for n in (1, 2, 3):
        t.offer(r(n, "x"), 0)
    t.new_connection(0)
    assert [t.offer(r(n, "x"), 0).duplicate for n in (1, 2, 3)] == [True, True, True]
    out = t.offer(r(4, "x"), 0)
    assert seqs(out.ready) == [4] and out.reset is None and t.resets == 0
    assert t.offer(r(1, "other"), 0).duplicate  # the new message ended the judging: within the connection again


def test_nothing_known_about_the_seq_on_reset_decides():
    for on_reset, restarted in (("restart", True), ("drop", False)):
        t = SequenceTracker(reset_window=2, on_reset=on_reset)
        for n in range(1, 31):
            t.offer(r(n, "x"), 0)  # 1, 2 (the head) are known; 3..30 are not
        t.new_connection(0)
        out = t.offer(r(3, "x"), 0)
        assert out.reset == (None, 30, 3, None, "unknown", restarted, 0) and out.duplicate is not restarted, on_reset
        if not restarted:  # said once per connection; the position stays
            again = t.offer(r(4, "x"), 0)
            assert again.duplicate and again.reset is None and t.positions() == {None: 30}


def test_a_recall_tells_what_the_window_no_longer_holds():
    kept = {(None, 1): hash(b"1:x")}
    t = SequenceTracker({None: 9}, recall=lambda stream, seq: kept.get((stream, seq)))
    assert t.offer(r(1, "x"), 0).duplicate  # positions from a store: judged at once, recalled as the same
    assert t.offer(r(1, "y"), 0).reset.why == "content"


def test_a_reset_gives_up_the_old_numberings_gap_first_delivering_what_it_held():
    t = SequenceTracker({None: 1}, on_reset="restart")
    t.offer(r(2, "a"), 0)
    t.offer(r(5, "a"), 0)  # gap 3..4 holds 5
    t.new_connection(0)
    out = t.offer(r(1, "b"), 0)
    [before] = out.before
    assert before.lost == Gap(None, 3, 4) and seqs(before.ready) == [5]
    assert out.reset.last == 2 and seqs(out.ready) == [1] and t.held == 0 and t.positions() == {None: 1}


def test_another_epoch_starts_the_stream_afresh_at_once_the_same_epoch_replays_are_duplicates():
    t = SequenceTracker()
    for n in (1, 2, 3):
        t.offer(r(n, "x", "s", epoch="e1"), 0)
    assert t.epochs() == {"s": "e1"}
    t.new_connection(0)
    assert t.offer(r(1, "other", "s", epoch="e1"), 0).duplicate  # the same epoch: content is not looked at
    out = t.offer(r(1, "x", "s", epoch="e2"), 0)  # a new epoch, even within a connection
    assert out.reset == ("s", 3, 1, "e2", "epoch", True, 0) and seqs(out.ready) == [1]
    assert t.epochs() == {"s": "e2"} and t.positions() == {"s": 1}
    assert seqs(t.offer(r(2, "x", "s"), 0).ready) == [2]  # a message without an epoch keeps the stream's


def test_the_first_epoch_seen_is_adopted_without_a_reset():
    t = SequenceTracker({"s": 5})
    out = t.offer(r(6, "x", "s", epoch=7), 0)
    assert seqs(out.ready) == [6] and out.reset is None and t.epochs() == {"s": 7}


def test_epochs_from_a_store_belong_to_their_positions():
    t = SequenceTracker({"s": 5}, epochs={"s": "e1"})
    assert t.offer(r(5, "anything", "s", epoch="e1"), 0).duplicate
    assert t.offer(r(1, "x", "s", epoch="e2"), 0).reset.why == "epoch"


def test_numbered_per_connection_every_connection_starts_every_stream_afresh():
    t = SequenceTracker(per_connection=True)
    t.offer(r(1, "x", "a"), 0)
    t.offer(r(3, "x", "a"), 0)  # a gap within the connection holds 3
    outcomes = t.new_connection(0)
    assert [(o.lost, seqs(o.ready)) for o in outcomes] == [(Gap("a", 2, 2), [3])]
    assert t.positions() == {} and t.held == 0
    out = t.offer(r(1, "x", "a"), 0)
    assert seqs(out.ready) == [1] and out.reset is None and not out.duplicate
    assert t.offer(r(1, "x", "a"), 0).duplicate  # within the connection, as always


def test_reset_settings_are_checked():
    for kwargs in ({"on_reset": "ignore"}, {"reset_window": 0}, {"global_seq": True, "per_connection": True}):
        with pytest.raises(ValueError):
            SequenceTracker(**kwargs)


def test_a_position_of_no_known_epoch_meeting_an_epoch_is_still_judged_by_content():
    t = SequenceTracker({"s": 3}, on_reset="restart")  # from a store that kept no epoch
    out = t.offer(r(1, "x", "s", epoch="e2"), 0)
    assert out.reset == ("s", 3, 1, "e2", "unknown", True, 0) and t.epochs() == {"s": "e2"}


def test_a_replay_from_the_start_of_a_long_history_is_known_by_its_first_messages():
    t = SequenceTracker(reset_window=4)
    for n in range(1, 41):
        t.offer(r(n, "x"), 0)
    t.new_connection(0)
    outs = [t.offer(r(n, "x"), 0) for n in range(1, 41)]
    assert all(o.duplicate for o in outs)
    # 1..4 (the head) are known; 5..40 are not: said once, dropped (on_reset="drop")
    assert [(o.reset.seq, o.reset.restarted) for o in outs if o.reset] == [(5, False)]
    assert seqs(t.offer(r(41, "x"), 0).ready) == [41] and t.resets == 0


def test_a_restart_after_a_long_history_is_known_by_the_first_messages_of_the_old_numbering():
    t = SequenceTracker(reset_window=4)
    for n in range(1, 21):
        t.offer(r(n, "old"), 0)
    t.new_connection(0)
    out = t.offer(r(1, "new"), 0)
    assert out.reset == (None, 20, 1, None, "content", True, 0) and seqs(out.ready) == [1]
    t.new_connection(0)
    assert t.offer(r(1, "new"), 0).duplicate  # the new numbering's head is its own


def offer_all(t, messages):
    """Offer each message (None: a new connection); what was delivered, in order, and the resets."""
    ready, resets = [], []
    for x in messages:
        outs = t.new_connection(0) if x is None else [t.offer(x, 0)]
        for out in outs:
            for earlier in out.before:
                ready += earlier.ready
            ready += out.ready
            if out.reset is not None:
                resets.append(out.reset)
    return [(x.seq, x.raw.decode().split(":")[1]) for x in ready], resets


def test_a_stream_with_an_epoch_restarted_without_one_is_judged_by_content():
    old = [r(n, f"a{n}", epoch="A") for n in (1, 2, 3, 4, 5)]
    got, resets = offer_all(SequenceTracker(), old + [None] + [r(n, f"b{n}") for n in (1, 2, 3)])
    assert got[5:] == [(1, "b1"), (2, "b2"), (3, "b3")]
    assert resets == [(None, 5, 1, None, "content", True, 0)]
    # The restarted server's first message lacks the epoch, the next ones carry the new one: nothing lost.
    new = [r(1, "b1")] + [r(n, f"b{n}", epoch="B") for n in (2, 3, 4)]
    t = SequenceTracker()
    got, resets = offer_all(t, old + [None] + new)
    assert got[5:] == [(1, "b1"), (2, "b2"), (3, "b3"), (4, "b4")] and len(resets) == 1
    assert t.epochs() == {None: "B"}


def test_an_earlier_epoch_coming_back_is_stale_dropped_and_said_once_per_connection():
    t = SequenceTracker()
    a = [r(n, f"a{n}", epoch="A") for n in (1, 2, 3)]
    got, resets = offer_all(t, a + [None] + [r(n, f"b{n}", epoch="B") for n in (1, 2)] + [None] + a + [r(3, "b3", epoch="B")])
    assert got == [(1, "a1"), (2, "a2"), (3, "a3"), (1, "b1"), (2, "b2"), (3, "b3")]
    assert resets == [(None, 3, 1, "B", "epoch", True, 0), (None, 2, 1, "A", "stale", False, 0)]
    assert t.epochs() == {None: "B"} and t.positions() == {None: 3} and t.resets == 1


def test_a_restart_inside_an_open_gap_is_still_found():
    old = [r(n, f"o{n}") for n in list(range(1, 11)) + list(range(13, 21))]  # 11, 12 missing: 13..20 held
    got, resets = offer_all(SequenceTracker(), old + [None] + [r(n, f"n{n}") for n in range(11, 25)])
    # The restart's 11, 12 fill the old gap (and release the old 13..20); its 13 is told apart by content.
    assert got[10:] == [(11, "n11"), (12, "n12")] + [(n, f"o{n}") for n in range(13, 21)] + [
        (n, f"n{n}") for n in range(13, 25)]
    assert resets == [(None, 20, 13, None, "content", True, 0)]
    # Past the head too: what the gap released on this connection is what tells.
    got, resets = offer_all(SequenceTracker(reset_window=2), old + [None] + [r(n, f"n{n}") for n in range(11, 25)])
    assert resets == [(None, 20, 13, None, "content", True, 0)] and len(got) == 10 + 2 + 8 + 12
    # A resume that resends the old gap and what followed it is a replay, even past the head.
    got, resets = offer_all(SequenceTracker(reset_window=2), old + [None] + [r(n, f"o{n}") for n in range(11, 22)])
    assert got[-3:] == [(19, "o19"), (20, "o20"), (21, "o21")] and len(got) == 21 and resets == []


def test_a_reset_says_the_position_before_not_the_one_its_given_up_gap_moved_to():
    old = [r(n, f"o{n}") for n in list(range(1, 11)) + list(range(13, 21))]
    got, resets = offer_all(SequenceTracker(), old + [None] + [r(1, "n1")])
    assert resets == [(None, 10, 1, None, "content", True, 0)] and got[-9:] == [(n, f"o{n}") for n in range(13, 21)] + [(1, "n1")]


def test_a_restart_whose_first_messages_repeat_the_old_ones_says_how_many_were_dropped_as_identical():
    old = [r(n, "snap") for n in (1, 2, 3)] + [r(n, "old") for n in range(4, 11)]
    got, resets = offer_all(SequenceTracker(), old + [None] + [r(n, "snap") for n in (1, 2, 3)] + [r(4, "new")])
    assert resets == [(None, 10, 4, None, "content", True, 3)] and got[-1] == (4, "new")


def test_a_stream_keeps_digests_not_messages():
    import tracemalloc
    tracemalloc.start()
    try:
        t = SequenceTracker()
        base = tracemalloc.get_traced_memory()[0]
        for s in range(2000):
            raw = (b'{"seq":1,"s":%d,"p":"' % s).ljust(1022, b"x") + b'"}'
            t.offer(Message("t", None, 1, None, str(s), None, raw), 0)
            del raw
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert used < 2000 * 512  # the 1 KiB frames are not kept (a stream costs a few hundred bytes)


def test_advance_takes_only_the_steady_state_and_changes_nothing_otherwise():
    """`advance` (the dispatcher's fast path) is `offer` for the next message of a stream
    with nothing to judge; for anything else it leaves the tracker as it was."""
    t = SequenceTracker({"a": 3})
    assert not t.advance(m(4, "a"))  # after a start from a position, the next seq is judged first
    assert [x.seq for x in t.offer(m(4, "a"), 0.0).ready] == [4]
    assert t.advance(m(5, "a")) and t.positions() == {"a": 5}
    t = SequenceTracker()
    t.offer(m(3, "a"), 0.0)
    assert t.advance(m(4, "a")) and t.positions() == {"a": 4}
    for other in (m(4, "a"), m(6, "a"), m(1, "b"), m(None, "a", id="x")):  # duplicate, gap, new stream, no seq
        assert not t.advance(other)
        assert t.positions() == {"a": 4} and t.held == 0
    assert t.offer(m(6, "a"), 0.0).opened == Gap("a", 5, 5)  # a gap: held
    assert not t.advance(m(7, "a"))  # something is held: offer judges it
    assert [x.seq for x in t.offer(m(5, "a"), 0.0).ready] == [5, 6]
    assert t.advance(m(7, "a")) and t.positions() == {"a": 7}
    assert not SequenceTracker(global_seq=True).advance(m(1, "a"))
