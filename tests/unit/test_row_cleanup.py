"""The row cleanup (operations/row_cleanup.py) on the real SQLite store: retries while the store
fails, removes the rows it was given by id, and a row found by sha256 only while un-indexed;
the removed ids go on to the vector cleanup."""

from __future__ import annotations

import base64
import hashlib
import time

from operations.domain import ImageRow
from operations.errors import DependencyUnavailable
from operations.row_cleanup import RowCleanup
from operations.stores.sql_image_store import SqlImageStore
from operations.stores.sql_pool import SqlPool
from tests.stack import jpeg


class FlakyImages(SqlImageStore):
    """The SQLite image store whose deletes fail the first `failures` times."""

    def __init__(self, pool: SqlPool, failures: int) -> None:
        super().__init__(pool)
        self.failures = failures
        self.attempts = 0

    def delete(self, collection, ids):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise DependencyUnavailable("mysql", "no answer within 2 s")
        return super().delete(collection, ids)


class RecordedVectorCleanup:
    """Records what the row cleanup hands on; the collection is in its 5th making."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, list[int], int | None]] = []

    def incarnation_now(self, collection) -> int:
        return 5

    def submit(self, collection, ids, incarnation=None) -> None:
        self.submitted.append((collection, sorted(ids), incarnation))


def _row(seed: int) -> ImageRow:
    data = jpeg(seed)
    return ImageRow(
        id=None, sha256=hashlib.sha256(data).hexdigest(), image_b64=base64.b64encode(data).decode()
    )


def _wait_drained(cleanup: RowCleanup) -> None:
    deadline = time.monotonic() + 10
    while cleanup.pending():
        assert time.monotonic() < deadline, "the cleanup did not drain"
        time.sleep(0.01)


def test_retries_then_removes_rows_by_id_and_unindexed_rows_by_sha(tmp_path):
    images = FlakyImages(SqlPool("", tmp_path / "i.sqlite3", 5, 2), failures=2)
    images.ensure_collection("c")
    rows = [_row(seed) for seed in range(4)]
    ids = [images.insert_new("c", row)[0] for row in rows]
    images.mark_indexed("c", [ids[3]])  # finished by a later add of the same bytes: kept
    vectors = RecordedVectorCleanup()
    cleanup = RowCleanup(images, vectors, retry_s=0.01)  # type: ignore[arg-type]
    cleanup.submit("c", ids=[ids[0]], shas=[rows[1].sha256, rows[3].sha256, "0" * 64], incarnation=5)
    _wait_drained(cleanup)
    cleanup.close()
    assert images.attempts == 3
    assert sorted(images.get_rows("c", ids)) == [ids[2], ids[3]]
    assert vectors.submitted == [("c", sorted([ids[0], ids[1]]), 5)]  # the same making, handed on


def test_a_dropped_collection_ends_its_row_cleanup(tmp_path):
    images = FlakyImages(SqlPool("", tmp_path / "i.sqlite3", 5, 2), failures=0)
    vectors = RecordedVectorCleanup()
    cleanup = RowCleanup(images, vectors, retry_s=0.01)  # type: ignore[arg-type]
    cleanup.submit("gone", ids=[7])
    _wait_drained(cleanup)
    cleanup.close()
    assert images.attempts == 0 and not vectors.submitted


def test_rows_of_an_earlier_making_of_the_collection_are_left_alone(tmp_path):
    # Made again (by another replica) since: its rows with these ids are new images.
    images = FlakyImages(SqlPool("", tmp_path / "i.sqlite3", 5, 2), failures=0)
    images.ensure_collection("c")
    new_id = images.insert_new("c", _row(1))[0]
    vectors = RecordedVectorCleanup()
    cleanup = RowCleanup(images, vectors, retry_s=0.01)  # type: ignore[arg-type]
    cleanup.submit("c", ids=[new_id], shas=[_row(1).sha256], incarnation=4)
    _wait_drained(cleanup)
    cleanup.close()
    assert images.attempts == 0 and not vectors.submitted
    assert sorted(images.get_rows("c", [new_id])) == [new_id]
