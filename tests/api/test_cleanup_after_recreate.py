"""A collection dropped and made again under the same name starts its image ids again at 1, so
the deletes a failed add left pending for the one before (the vector cleanup waiting for
Milvus, the row cleanup waiting for SQL) must not reach it: they would remove a new image's
vector or row. Real stores (Milvus Lite + SQLite, the Milvus 2.3 server + MariaDB); the
store's delete is made to fail, as during an outage, only for the cleanup's own calls."""

from __future__ import annotations

import time

import pytest

from operations.collections import create_collection, drop_collection
from operations.errors import DependencyUnavailable
from operations.ingest import Upload, add_images
from tests.stack import jpeg, unique


def _add_one(svc, name: str, seed: int) -> int:
    [result] = add_images(svc, name, [Upload(f"{seed}.jpg", jpeg(seed))])
    assert result.status == "added", result
    return int(result.id)


@pytest.mark.parametrize("which", ["vector_cleanup", "row_cleanup"])
def test_pending_deletes_of_a_dropped_collection_spare_the_one_made_after(services, monkeypatch, which):
    svc = services
    try:
        name = unique()
        create_collection(svc, name)
        old_id = _add_one(svc, name, 1)
        # The store the cleanup deletes from does not answer: its key stays pending.
        store = svc.vectors if which == "vector_cleanup" else svc.images
        real_delete = store.delete
        down = True

        def delete(*args, **kwargs):
            if down:
                raise DependencyUnavailable(which, "no answer within 2 s")
            return real_delete(*args, **kwargs)

        monkeypatch.setattr(store, "delete", delete)
        cleanup = getattr(svc, which)
        cleanup.submit(name, [old_id])
        assert cleanup.pending() == 1

        drop_collection(svc, name)
        create_collection(svc, name)
        new_id = _add_one(svc, name, 2)
        assert new_id == old_id  # the id the pending delete names belongs to a new image now
        down = False

        deadline = time.monotonic() + 10
        while cleanup.pending():  # without the fix it drains only by deleting the new image's data
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.5)  # past one more retry of the cleanup's thread
        assert svc.vectors.existing_ids(name, [new_id]) == {new_id}
        assert sorted(svc.images.get_rows(name, [new_id])) == [new_id]
    finally:
        svc.close_serving()  # the cleanups' threads
