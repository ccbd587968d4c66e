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
from tests.fixtures_stack import backend_settings
from tests.stack import jpeg, make_services, unique


def _wait_drained(cleanup) -> None:
    deadline = time.monotonic() + 10
    while cleanup.pending():  # without the fix it drains only by deleting the new image's data
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.5)  # past one more retry of the cleanup's thread


def _down_until_cleared(monkeypatch, store, which: str):
    """The store's delete fails, as during an outage, until the returned switch is called."""
    real_delete = store.delete
    down = [True]

    def delete(*args, **kwargs):
        if down[0]:
            raise DependencyUnavailable(which, "no answer within 2 s")
        return real_delete(*args, **kwargs)

    monkeypatch.setattr(store, "delete", delete)
    return lambda: down.__setitem__(0, False)


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
        back = _down_until_cleared(monkeypatch, store, which)
        cleanup = getattr(svc, which)
        cleanup.submit(name, [old_id])
        assert cleanup.pending() == 1

        drop_collection(svc, name)
        create_collection(svc, name)
        new_id = _add_one(svc, name, 2)
        assert new_id == old_id  # the id the pending delete names belongs to a new image now
        back()
        _wait_drained(cleanup)
        assert svc.vectors.existing_ids(name, [new_id]) == {new_id}
        assert sorted(svc.images.get_rows(name, [new_id])) == [new_id]
    finally:
        svc.close_serving()  # the cleanups' threads


@pytest.mark.parametrize("which", ["vector_cleanup", "row_cleanup"])
def test_pending_deletes_spare_a_collection_another_replica_made_again(
    request, tmp_path, monkeypatch, which, milvus_server, mariadb
):
    """The same, with the drop and the new collection made by another API replica (another
    process on the same Milvus server and MariaDB): this process's cleanups never hear of the
    drop, and find out from the collection's incarnation (the server's collection id)."""
    settings = backend_settings(request, tmp_path, "server")
    svc, other = make_services(settings), make_services(settings)
    try:
        name = unique()
        create_collection(svc, name)
        old_id = _add_one(svc, name, 1)
        made = svc.vectors.incarnation(name)  # what a failed add hands its cleanups (no call)
        assert isinstance(made, int) and made == svc.vectors.incarnation(name, fresh=True)
        back = _down_until_cleared(
            monkeypatch, svc.vectors if which == "vector_cleanup" else svc.images, which
        )
        cleanup = getattr(svc, which)
        cleanup.submit(name, [old_id], incarnation=made)
        assert cleanup.pending() == 1

        drop_collection(other, name)
        create_collection(other, name)
        new_id = _add_one(other, name, 2)
        assert new_id == old_id and svc.vectors.incarnation(name, fresh=True) not in (None, made)
        back()
        _wait_drained(cleanup)
        assert other.vectors.existing_ids(name, [new_id]) == {new_id}
        assert sorted(other.images.get_rows(name, [new_id])) == [new_id]
    finally:
        for s in (svc, other):
            s.close_serving()
            s.vectors.close()
            s.images.close()
