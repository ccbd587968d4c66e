"""The vector cleanup (operations/vector_cleanup.py): retries while the store fails,
then deletes exactly the ids it was given; a dropped collection ends the work."""

from __future__ import annotations

import threading
import time

import numpy as np

from operations.domain import IndexSpec
from operations.errors import DependencyUnavailable
from operations.stores.memory_vector_store import InMemoryVectorStore
from operations.vector_cleanup import VectorCleanup


class FlakyStore(InMemoryVectorStore):
    """The in-memory store whose deletes fail the first `failures` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    def delete(self, name, ids, *, visible: bool = True) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise DependencyUnavailable("milvus", "no answer within 2 s")
        super().delete(name, ids, visible=visible)


def _wait_drained(cleanup: VectorCleanup) -> None:
    deadline = time.monotonic() + 10
    while cleanup.pending():
        assert time.monotonic() < deadline, "the cleanup did not drain"
        time.sleep(0.01)


def test_retries_until_the_store_answers_and_deletes_only_the_given_ids():
    store = FlakyStore(failures=3)
    store.create_collection("c", 4, "m", IndexSpec())
    store.upsert("c", [1, 2, 3], np.eye(4, dtype=np.float32)[:3])
    cleanup = VectorCleanup(store, retry_s=0.01)
    cleanup.submit("c", [1, 3])
    _wait_drained(cleanup)
    assert store.attempts == 4
    assert store.count("c") == 1 and store.existing_ids("c", [1, 2, 3]) == {2}
    assert cleanup.deleted == 2
    cleanup.close()


def test_a_dropped_collection_ends_its_cleanup():
    store = FlakyStore(failures=0)
    cleanup = VectorCleanup(store, retry_s=0.01)
    cleanup.submit("gone", [7])
    _wait_drained(cleanup)
    cleanup.close()
    cleanup.submit("gone", [8])  # after close: ignored
    assert cleanup.pending() == 0


def test_forget_drops_what_is_pending_for_one_collection_only():
    store = FlakyStore(failures=10**9)  # down for the whole test
    store.create_collection("c", 4, "m", IndexSpec())
    cleanup = VectorCleanup(store, retry_s=0.01)
    cleanup.submit("c", [1, 2])
    cleanup.submit("other", [5])
    assert cleanup.forget("c") == 2
    assert cleanup.pending() == 1  # "other" keeps its key
    assert cleanup.forget("c") == 0
    cleanup.close()


class GatedStore(InMemoryVectorStore):
    """Deletes block until `release` is set: a delete under way."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def delete(self, name, ids, *, visible: bool = True) -> None:
        self.entered.set()
        assert self.release.wait(10)
        super().delete(name, ids, visible=visible)


def test_forget_waits_out_a_delete_under_way_so_none_reaches_a_collection_made_after():
    store = GatedStore()
    store.create_collection("c", 4, "m", IndexSpec())
    cleanup = VectorCleanup(store, retry_s=0.01)
    cleanup.submit("c", [1])
    assert store.entered.wait(10)
    done = threading.Event()
    forgetting = threading.Thread(target=lambda: (cleanup.forget("c"), done.set()))
    forgetting.start()
    assert not done.wait(0.2), "forget returned while the delete was still under way"
    store.release.set()
    assert done.wait(10)
    forgetting.join()
    # A submit after a forget is served (the worker was not left asleep by a lost notify).
    store.upsert("c", [2], np.eye(4, dtype=np.float32)[:1])
    cleanup.submit("c", [2])
    _wait_drained(cleanup)
    assert store.count("c") == 0
    cleanup.close()


class RemadeStore(FlakyStore):
    """A store whose collections report an incarnation, as the Milvus server's collection id;
    `unreachable` makes that question fail like an outage."""

    def __init__(self) -> None:
        super().__init__(failures=0)
        self.made = {"c": 1}
        self.unreachable = False
        self.asked = 0

    def incarnation(self, name, fresh: bool = False):
        self.asked += 1
        if self.unreachable:
            raise DependencyUnavailable("milvus", "no answer within 2 s")
        return self.made.get(name)


def test_ids_of_an_earlier_making_of_the_collection_are_dropped_not_deleted():
    # Another process (an API replica) dropped the collection and made it again: its new
    # images start again at id 1, so the ids held for the making before must not be deleted.
    store = RemadeStore()
    store.create_collection("c", 4, "m", IndexSpec())
    store.upsert("c", [1, 2], np.eye(4, dtype=np.float32)[:2])
    store.made["c"] = 2
    store.unreachable = True  # the question waits for Milvus like a delete does
    cleanup = VectorCleanup(store, retry_s=0.01)
    cleanup.submit("c", [1], incarnation=1)
    deadline = time.monotonic() + 10
    while store.asked < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert cleanup.pending() == 1 and store.attempts == 0
    store.unreachable = False
    _wait_drained(cleanup)
    assert store.attempts == 0 and store.existing_ids("c", [1, 2]) == {1, 2}
    # Ids of the making that holds the name are deleted; ids with no known making as before.
    cleanup.submit("c", [1], incarnation=2)
    _wait_drained(cleanup)
    cleanup.submit("c", [2])
    _wait_drained(cleanup)
    assert store.existing_ids("c", [1, 2]) == set() and store.attempts == 2
    cleanup.close()
