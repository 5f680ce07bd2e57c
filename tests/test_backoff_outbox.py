"""Pure policy objects: backoff delays and the send buffer."""

import pytest

from wsbridge import Backoff, Outbox, OutboxFull


def test_backoff_grows_exponentially_to_the_cap():
    policy = Backoff(initial=0.5, factor=2.0, max_delay=5.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_backoff_jitter_shortens_within_the_stated_fraction():
    policy = Backoff(initial=1.0, factor=2.0, max_delay=30.0, jitter=0.5)
    assert policy.delay(3, rand=0.0) == 4.0
    assert policy.delay(3, rand=0.5) == 3.0
    assert policy.delay(3, rand=0.999) == pytest.approx(2.002)


def test_backoff_max_attempts_and_delays_iterator():
    policy = Backoff(initial=1, factor=3, max_delay=100, jitter=0, max_attempts=3)
    assert list(policy.delays(rand=lambda: 0.0)) == [1, 3, 9]
    assert policy.allows(3) and not policy.allows(4)
    assert not Backoff(max_attempts=0).allows(1)


def test_backoff_huge_attempt_numbers_do_not_overflow():
    assert Backoff(initial=1, factor=10, max_delay=60, jitter=0).delay(10_000) == 60


@pytest.mark.parametrize(
    "kwargs", [{"initial": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"max_attempts": -1}, {"reset_after": -1}]
)
def test_backoff_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_outbox_raise_policy_keeps_everything_it_accepted():
    box = Outbox(2, "raise")
    box.put("a")
    box.put("b")
    with pytest.raises(OutboxFull):
        box.put("c")
    assert box.items() == ["a", "b"]


def test_outbox_drop_oldest_returns_what_it_dropped():
    box = Outbox(2, "drop_oldest")
    assert box.put("a") is None
    box.put("b")
    assert box.put("c") == "a"
    assert box.items() == ["b", "c"]


def test_outbox_drop_oldest_spares_the_frame_being_sent():
    box = Outbox(2, "drop_oldest")
    box.put("a")
    box.put("b")
    assert box.put("c", keep=1) == "b"
    assert box.items() == ["a", "c"]
    single = Outbox(1, "drop_oldest")
    single.put("a")
    with pytest.raises(OutboxFull):
        single.put("b", keep=1)
    batch = Outbox(4, "drop_oldest")  # a batch of three in flight: the fourth is the oldest to drop
    for x in "abcd":
        batch.put(x)
    assert batch.put("e", keep=3) == "d" and batch.items() == ["a", "b", "c", "e"]
    with pytest.raises(OutboxFull):
        batch.put("f", keep=4)


def test_outbox_peek_many_then_pop_many():
    box = Outbox(5)
    for x in range(4):
        box.put(x)
    assert box.peek_many(3) == [0, 1, 2] and len(box) == 4
    box.pop_many(3)
    assert box.items() == [3] and box.peek_many(10) == [3]


def test_outbox_peek_then_pop_removes_only_after_success():
    box = Outbox(5)
    box.put(1)
    box.put(2)
    assert box.peek() == 1 and len(box) == 2
    assert box.pop() == 1 and box.peek() == 2
    assert box.clear() == [2] and box.peek() is None


def test_outbox_validates_arguments():
    with pytest.raises(ValueError):
        Outbox(0)
    with pytest.raises(ValueError):
        Outbox(10, "spill")
