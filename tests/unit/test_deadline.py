"""One deadline per store call (operations/deadline.py) and the outage log
(operations/stores/outage.py)."""

from __future__ import annotations

import logging
import time

import pytest

from operations import deadline
from operations.errors import DependencyUnavailable
from operations.stores.outage import OutageLog


def test_deadline_nests_and_runs_out():
    with deadline.store_call("x", 0.3) as outer:
        with deadline.store_call("x", 10.0) as inner:
            assert inner is outer  # nested calls share the outer call's deadline
        with deadline.store_call("y", 10.0) as other:
            assert other.left() > 5  # another store has its own
        time.sleep(0.35)
        with pytest.raises(DependencyUnavailable, match="x unavailable"):
            outer.left_or_raise()
    assert deadline.current("x") is None


def test_outage_log_is_two_lines_with_counts(caplog):
    caplog.set_level(logging.INFO)
    outage = OutageLog("milvus", logging.getLogger("test.outage"), settle_s=0.3)
    outage.succeeded()
    for _ in range(5):
        outage.failed("deadline exceeded")
    outage.succeeded()  # answering again, not yet settled:
    outage.failed("no answer within 2 s")  # still the same outage
    outage.succeeded()
    time.sleep(0.35)
    outage.succeeded()
    outage.succeeded()
    lines = [r.getMessage() for r in caplog.records if r.name == "test.outage"]
    assert len(lines) == 2, lines
    assert "milvus is down" in lines[0] and "deadline exceeded" in lines[0]
    assert "milvus is back" in lines[1] and "6 calls failed" in lines[1]


def test_a_request_has_one_budget_per_store():
    with deadline.request_scope():
        with deadline.store_call("x", 0.5):
            time.sleep(0.3)  # a slow answer, still in time
        time.sleep(0.3)  # time spent elsewhere (encoding) is not counted
        with deadline.store_call("x", 0.5) as second:
            assert 0.1 < second.left() < 0.25  # what the first call left
        with deadline.store_call("y", 0.5) as other:
            assert other.left() > 0.45  # each store has its own budget
        with deadline.store_call("x", 0.5, own=True) as long_wait:
            assert long_wait.left() > 0.45  # a call allowed to wait longer has its own
        with deadline.store_call("x", 0.5) as third:
            time.sleep(third.left() + 0.01)
        with pytest.raises(DependencyUnavailable, match="already waited"):
            with deadline.store_call("x", 0.5):
                pass
    with deadline.store_call("x", 0.5) as outside:  # outside a request: each call its own
        assert outside.left() > 0.45
