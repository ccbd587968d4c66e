"""The stage runner on its own: order of stages, parallel workers, errors, cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from operations.pipeline import Stage, run_stages


def test_every_item_passes_every_stage_once():
    seen_a, seen_b = [], []
    lock = threading.Lock()

    def a(x):
        with lock:
            seen_a.append(x)
        return x * 10

    def b(x):
        with lock:
            seen_b.append(x)

    run_stages(range(50), [Stage("a", a, workers=3), Stage("b", b)])
    assert sorted(seen_a) == list(range(50))
    assert sorted(seen_b) == [x * 10 for x in range(50)]


def test_none_passes_nothing_on():
    out = []
    run_stages(range(10), [Stage("odd", lambda x: x if x % 2 else None), Stage("collect", out.append)])
    assert sorted(out) == [1, 3, 5, 7, 9]


def test_workers_of_a_stage_run_at_once():
    barrier = threading.Barrier(3, timeout=10)
    run_stages(range(3), [Stage("wait", lambda _: barrier.wait(), workers=3, queue_size=3)])


def test_a_stage_error_stops_the_source_and_is_raised_after_every_thread_ended():
    taken = []

    def source():
        for i in range(1000):
            taken.append(i)
            yield i

    done = []

    def slow_sink(x):
        time.sleep(0.001)
        done.append(x)

    def fail_on_5(x):
        if x == 5:
            raise RuntimeError("boom at 5")
        return x

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="boom at 5"):
        run_stages(
            source(), [Stage("first", fail_on_5, queue_size=1), Stage("sink", slow_sink, queue_size=1)]
        )
    assert len(taken) < 20  # stopped soon, not read to the end
    assert 5 not in done
    assert threading.active_count() == before  # no thread left behind


def test_an_error_of_the_last_stage_does_not_block_the_first():
    """The failing stage keeps draining its queue, so the stage feeding it never blocks."""

    def sink(x):
        raise ValueError(f"sink refuses {x}")

    with pytest.raises(ValueError, match="sink refuses 0"):
        run_stages(
            range(100),
            [Stage("pass", lambda x: x, workers=2, queue_size=1), Stage("sink", sink, queue_size=1)],
        )


def test_an_error_of_the_source_wins_and_stages_still_end():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    out = []
    before = threading.active_count()
    with pytest.raises(OSError, match="disk gone"):
        run_stages(source(), [Stage("collect", out.append)])
    assert sorted(out) == [1, 2]  # items already taken are finished
    assert threading.active_count() == before


def test_cancellation_stops_reading_and_finishes_what_was_taken():
    cancel = threading.Event()
    taken, finished = [], []

    def source():
        for i in range(1000):
            taken.append(i)
            if i == 9:
                cancel.set()
            yield i

    run_stages(source(), [Stage("work", finished.append, queue_size=1)], cancelled=cancel.is_set)
    assert taken == list(range(10))
    assert sorted(finished) == taken


def test_no_stage_is_an_error():
    with pytest.raises(ValueError):
        run_stages([1], [])
