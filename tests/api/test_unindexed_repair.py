"""Rows a dead add left without their vector (operations/unindexed_repair.py, REPAIR_INTERVAL_S):
the server's own thread indexes them, so a search finds them without anyone running
`imgsearch repair`; only rows older than HOLDER_DEAD_AFTER_S (a live add's are younger), never on
a collection a job works on, never in a rebuild version no name points at; a store error ends a
round, not the thread. And `repair_unindexed` itself: the age bound (a folder add's call uses it,
the command line's does not), a store error ends the call, a mark that does not hold ends it too.
On Milvus Lite + SQLite; the main case also on the Milvus 2.3 server + MariaDB."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.main import create_app
from config.settings import Settings
from operations import ingest, load, unindexed_repair
from operations.collections import create_collection
from operations.domain import ImageRow, VectorAttrs
from operations.errors import DependencyUnavailable
from operations.images import check_image
from operations.ingest import HOLDER_DEAD_AFTER_S, add_folder, repair_unindexed
from operations.progress import Counter
from operations.search import search_image
from operations.unindexed_repair import repair_round, repair_targets
from scripts import cli
from tests.fixtures_stack import BACKENDS, backend_settings
from tests.stack import jpeg, make_services, make_settings, unique, unit_rows, write_dataset

INTERVAL_S = 0.3  # the repair's interval in these tests (its first round comes as soon)
DEAD = int(HOLDER_DEAD_AFTER_S) + 60  # seconds: the age of a dead add's row


def _app(settings):
    svc = make_services(settings)
    c = TestClient(create_app(settings, svc))
    c.services = svc
    return c


def _row_without_vector(svc, seed: int, added_at: int) -> ImageRow:
    """The row another add stored for jpeg(seed) before its vector (a live or a dead add's)."""
    img = check_image(jpeg(seed), svc.settings.max_upload_bytes, svc.settings.max_image_pixels)
    return ImageRow(
        None, img.sha256, img.b64, img.mime, img.width, img.height, created_at=added_at, added_at=added_at
    )


def _leave(svc, name: str, seed: int, age_s: int) -> int:
    """A row without its vector, added `age_s` seconds ago: its id."""
    image_id, created = svc.images.insert_new(name, _row_without_vector(svc, seed, int(time.time()) - age_s))
    assert created
    return image_id


def _until(check, timeout_s: float = 30, what: str = "the condition"):
    """Poll `check` until it answers something true (that answer) or the deadline passes."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if got := check():
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def _found(svc, name: str, seed: int) -> int | None:
    """The id a search for jpeg(seed) finds first, if any."""
    matches = search_image(svc, name, data=jpeg(seed), top_k=1).matches
    return matches[0].row.id if matches else None


def _indexed(svc, name: str, image_id: int) -> bool:
    return bool(svc.images.indexed_ids(name, [image_id])) and bool(svc.vectors.existing_ids(name, [image_id]))


def _untouched(svc, name: str, image_id: int) -> bool:
    return not svc.images.indexed_ids(name, [image_id]) and not svc.vectors.existing_ids(name, [image_id])


def _rounds_after(c, n: int) -> None:
    """`n` more rounds of the repair have finished."""
    repair = c.app.state.unindexed_repair
    target = repair.rounds + n
    _until(lambda: repair.rounds >= target, what=f"{n} repair rounds")


def _repaired_total() -> float:
    return REGISTRY.get_sample_value("imgsearch_repaired_rows_total") or 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dead_adds_row_is_found_by_a_search_after_the_periodic_repair(request, tmp_path, backend):
    settings = backend_settings(request, tmp_path, backend, repair_interval_s=INTERVAL_S)
    c = _app(settings)
    svc, name = c.services, unique()
    create_collection(svc, name)
    left = _leave(svc, name, 11, DEAD)  # its process was killed before the vector write
    assert _found(svc, name, 11) is None
    before = _repaired_total()
    with c:
        assert _until(lambda: _found(svc, name, 11) == left, what="the search finding the row")
        assert _indexed(svc, name, left)
        assert c.post("/img/search", json={"query": "方块", "collection": name, "top_k": 5}).json()["results"]
    assert _repaired_total() - before >= 1
    assert not c.app.state.unindexed_repair.thread.is_alive()  # stopped with the app


def test_a_young_row_without_its_vector_is_left_to_its_live_add(tmp_path):
    """A row added just now belongs to an add that is still running (it inserts a chunk's rows
    just before encoding them): the repair indexes the dead add's row beside it, not this one."""
    c = _app(make_settings(tmp_path, repair_interval_s=INTERVAL_S))
    svc, name = c.services, unique()
    create_collection(svc, name)
    dead, live = _leave(svc, name, 21, DEAD), _leave(svc, name, 22, 0)
    with c:
        _until(lambda: _indexed(svc, name, dead), what="the dead add's row indexed")
        _rounds_after(c, 2)
        assert _untouched(svc, name, live)
    assert svc.images.unindexed_ids(name, 10) == [live]


def test_a_collection_a_job_works_on_is_skipped_until_the_job_ends(tmp_path):
    """A job of another replica (queued, its lease held) on one collection: that one is left
    alone round after round, the others are repaired; once the job has ended, it is repaired."""
    c = _app(make_settings(tmp_path, repair_interval_s=INTERVAL_S))
    svc = c.services
    busy, free = unique(), unique()
    create_collection(svc, busy)
    create_collection(svc, free)
    busy_row, free_row = _leave(svc, busy, 31, DEAD), _leave(svc, free, 32, DEAD)
    job = svc.jobs.create("add", busy, {}, owner="elsewhere:1:x", lease_s=3600)
    with c:
        _until(lambda: _indexed(svc, free, free_row), what="the free collection's row indexed")
        _rounds_after(c, 2)
        assert _untouched(svc, busy, busy_row)
        svc.jobs.finish(job.id, "cancelled")
        assert _until(lambda: _found(svc, busy, 31) == busy_row, what="the row found once the job ended")


def test_a_store_error_in_a_round_does_not_stop_later_rounds(tmp_path, monkeypatch, caplog):
    """An outage (a ServiceError: one warning line, no traceback) and a bug (any other error:
    logged with its traceback) each end a round; the next round repairs the row."""
    caplog.set_level(logging.INFO, logger="operations.unindexed_repair")
    c = _app(make_settings(tmp_path, repair_interval_s=INTERVAL_S))
    svc, name = c.services, unique()
    create_collection(svc, name)
    left = _leave(svc, name, 41, DEAD)
    real = svc.images.unindexed_ids
    failures = [DependencyUnavailable("sqlite", "database is locked"), RuntimeError("a bug")]

    def unindexed_ids(*args, **kwargs):
        if failures:
            raise failures.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(svc.images, "unindexed_ids", unindexed_ids)
    with c:
        assert _until(lambda: _found(svc, name, 41) == left, what="the search finding the row")
        assert c.app.state.unindexed_repair.thread.is_alive()
    records = [r for r in caplog.records if r.name == "operations.unindexed_repair"]
    outage = [r for r in records if "database is locked" in r.getMessage()]
    bug = [r for r in records if r.exc_info and "a bug" in str(r.exc_info[1])]
    assert len(outage) == 1 and outage[0].levelno == logging.WARNING and outage[0].exc_info is None
    assert len(bug) == 1 and bug[0].levelno == logging.ERROR


def test_an_interval_of_0_starts_no_thread(tmp_path):
    c = _app(make_settings(tmp_path, repair_interval_s=0))
    svc, name = c.services, unique()
    create_collection(svc, name)
    left = _leave(svc, name, 51, DEAD)
    with c:
        assert c.app.state.unindexed_repair.thread is None
        assert "unindexed-repair" not in {t.name for t in threading.enumerate()}
    assert _untouched(svc, name, left)


def test_the_first_round_comes_soon_after_the_start(tmp_path, monkeypatch):
    """A restart after a crash is when dead adds' rows exist: the first round does not wait a
    whole interval (at most FIRST_ROUND_MAX_S, shortened here)."""
    monkeypatch.setattr(unindexed_repair, "FIRST_ROUND_MAX_S", INTERVAL_S)
    c = _app(make_settings(tmp_path, repair_interval_s=3600))
    svc, name = c.services, unique()
    create_collection(svc, name)
    left = _leave(svc, name, 55, DEAD)
    with c:
        assert _until(lambda: _found(svc, name, 55) == left, what="the search finding the row")


def test_the_default_interval_starts_the_thread_and_the_app_stops_it(tmp_path):
    default = Settings.model_fields["repair_interval_s"].default  # make_settings turns it off
    c = _app(make_settings(tmp_path, repair_interval_s=default))
    with c:
        repair = c.app.state.unindexed_repair
        assert repair.interval_s == 600 and repair.thread.is_alive()
    assert not repair.thread.is_alive()


def test_rebuild_versions_no_name_points_at_are_skipped(tmp_path):
    """A rebuild's version being built (or left behind) is no name's collection: its job writes its
    vectors; once the name is switched to it, it is the name's collection and is repaired."""
    svc = make_services(make_settings(tmp_path))
    create_collection(svc, "shop")
    svc.ensure_collection("shop__v2")  # as a rebuild makes its version
    old, new = _leave(svc, "shop", 61, DEAD), _leave(svc, "shop__v2", 62, DEAD)
    assert repair_targets(svc) == {"shop": ["shop"]}
    assert repair_round(svc, None) == {"shop": 1}
    assert _indexed(svc, "shop", old) and _untouched(svc, "shop__v2", new)

    svc.aliases.store.fence("shop", "shop", 60)
    assert svc.aliases.store.switch("shop", "shop__v2", {"shop__v1": "shop"})
    svc.aliases.forget()
    assert repair_targets(svc) == {"shop__v2": ["shop"]}  # the version left behind is skipped
    assert repair_round(svc, None) == {"shop__v2": 1}
    assert _indexed(svc, "shop__v2", new)


# --- repair_unindexed itself -----------------------------------------------------------------


def _within(timeout_s: float, fn, *args):
    """fn(*args) on a daemon thread: its answer or its error, or a failure if it has not ended
    within `timeout_s` (a loop that never ends is left behind, not waited for)."""
    out: list = []

    def run() -> None:
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:
            out.append((False, exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    assert out, f"{fn.__name__} did not end within {timeout_s} s"
    ok, value = out[0]
    if not ok:
        raise value
    return value


def test_the_age_bound_leaves_young_rows_and_the_command_line_repair_takes_all(lite_services):
    svc, name = lite_services, unique()
    create_collection(svc, name)
    dead, live = _leave(svc, name, 71, DEAD), _leave(svc, name, 72, 10)
    assert repair_unindexed(svc, name, older_than_s=HOLDER_DEAD_AFTER_S) == 1
    assert _indexed(svc, name, dead) and _untouched(svc, name, live)
    assert repair_unindexed(svc, name) == 1  # `imgsearch repair NAME`: whatever the age
    assert _indexed(svc, name, live) and _found(svc, name, 72) == live


def test_a_folder_add_repairs_only_a_dead_adds_rows(lite_services):
    svc, name = lite_services, unique()
    create_collection(svc, name)
    dead, live = _leave(svc, name, 81, DEAD), _leave(svc, name, 82, 0)
    folder = svc.settings.data_root / "f"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(83))
    assert add_folder(svc, name, folder, Counter())["added"] == 1
    assert _indexed(svc, name, dead) and _untouched(svc, name, live)


def test_a_taken_over_folder_add_leaves_its_first_runs_young_rows_to_the_repair(lite_services, monkeypatch):
    """What README says of a folder add taken over from a dead replica (after its lease): the row
    its first run stored without a vector is younger than HOLDER_DEAD_AFTER_S, so the add waits
    HOLDER_WAIT_S, answers it "present", and leaves it to a later repair."""
    monkeypatch.setattr(ingest, "HOLDER_WAIT_S", 0.5)
    svc, name = lite_services, unique()
    create_collection(svc, name)
    first_run = _leave(svc, name, 85, 40)  # stored 40 s ago by the replica that died
    folder = svc.settings.data_root / "f"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg(85))
    (folder / "b.jpg").write_bytes(jpeg(86))
    assert add_folder(svc, name, folder, Counter()) == {"added": 1, "present": 1, "failed": 0, "total": 2}
    assert _untouched(svc, name, first_run)
    assert repair_unindexed(svc, name) == 1  # `imgsearch repair NAME`, or a round 300 s on
    assert _found(svc, name, 85) == first_run


def test_a_store_error_ends_the_repair_with_that_error(lite_services, monkeypatch):
    svc, name = lite_services, unique()
    create_collection(svc, name)
    left = _leave(svc, name, 91, DEAD)

    def upsert(*args, **kwargs):
        raise DependencyUnavailable("milvus", "no answer within 5 s")

    monkeypatch.setattr(svc.vectors, "upsert", upsert)
    with pytest.raises(DependencyUnavailable):
        _within(30, repair_unindexed, svc, name)
    assert _untouched(svc, name, left)


def test_a_mark_that_does_not_hold_ends_the_repair_instead_of_a_loop(lite_services, monkeypatch, caplog):
    svc, name = lite_services, unique()
    create_collection(svc, name)
    left = _leave(svc, name, 92, DEAD)
    monkeypatch.setattr(svc.images, "mark_indexed", lambda collection, ids: None)
    assert _within(30, repair_unindexed, svc, name) == 1
    assert "still not marked indexed" in caplog.text and svc.images.unindexed_ids(name, 10) == [left]


def test_a_row_its_writer_indexed_while_the_repair_encoded_keeps_that_writers_vector(
    lite_services, monkeypatch
):
    """A slow live writer (a command-line load, not a job, whose batch waited over 300 s) that
    writes its vector and marks the row while the repair encodes it: the repair leaves it alone."""
    svc, name = lite_services, unique()
    create_collection(svc, name)
    left = _leave(svc, name, 93, DEAD)
    encoder = svc.encoder_for(name)
    own = unit_rows(1, encoder.dim, 7)  # e.g. the dataset's feature for it
    real_encode = encoder.encode_images

    def encode_images(images):
        out = real_encode(images)
        svc.vectors.upsert(name, [left], own, [VectorAttrs()], model=encoder.model_name)
        svc.images.mark_indexed(name, [left])
        return out

    monkeypatch.setattr(encoder, "encode_images", encode_images)
    assert repair_unindexed(svc, name, older_than_s=HOLDER_DEAD_AFTER_S) == 0
    np.testing.assert_allclose(svc.vectors.get_vectors(name, [left])[left], own[0], atol=1e-6)


def test_a_live_command_line_writers_lease_keeps_the_automatic_repairs_away(lite_services):
    """A writer lease (a command-line load's) on a collection: the periodic and the folder add's
    repairs leave its old rows alone while the lease is live, the operator's repair does not; a
    released lease, or one its dead holder stopped renewing, lets them in again."""
    svc, name = lite_services, unique()
    create_collection(svc, name)
    first, second = _leave(svc, name, 101, DEAD), _leave(svc, name, 102, DEAD)
    lease = svc.writers.hold(name, "imgsearch load on elsewhere pid 1")
    assert repair_round(svc, None) == {}
    assert repair_unindexed(svc, name, older_than_s=HOLDER_DEAD_AFTER_S) == 0
    assert _untouched(svc, name, first) and _untouched(svc, name, second)
    svc.writers.release(lease)
    assert repair_round(svc, None) == {name: 2}
    assert _found(svc, name, 101) == first and _found(svc, name, 102) == second

    third = _leave(svc, name, 103, DEAD)
    svc.writers.hold(name, "a load killed: never renewed", lease_s=0.5)
    assert repair_unindexed(svc, name, older_than_s=HOLDER_DEAD_AFTER_S) == 0
    time.sleep(1.0)
    assert repair_unindexed(svc, name, older_than_s=HOLDER_DEAD_AFTER_S) == 1
    assert _indexed(svc, name, third)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_command_line_load_holds_its_lease_while_its_rows_wait(request, tmp_path, backend, monkeypatch):
    """`imgsearch load` holds a writer lease on the collection from before its first row to its
    end: an automatic repair run while a batch waits for its vectors (its rows taken as old as a
    dead add's: older_than_s < 0) indexes nothing. The same load without a lease (a job's, which
    the periodic repair skips by its job instead) would have had them repaired under it."""
    settings = backend_settings(request, tmp_path, backend)
    svc = make_services(settings)
    data = settings.data_root / "ds"
    write_dataset(data, "valid", 12, svc.encoder.dim, seed=5)
    seen: list[tuple[list[str], int]] = []
    real_index = load._SplitLoad.index_vectors

    def index_vectors(self, batch):
        seen.append((svc.writers.live_on(self.collection), repair_unindexed(svc, name, older_than_s=-3600)))
        real_index(self, batch)

    monkeypatch.setattr(load._SplitLoad, "index_vectors", index_vectors)
    monkeypatch.setattr(cli, "build_services", lambda settings, lazy_model=False: svc)
    name = unique("cliload")
    args = ["load", "--dataset", str(data), "--split", "valid", "--collection", name, "--batch-size", "4"]
    assert cli.main(args) == 0
    assert len(seen) == 3
    assert all(len(holders) == 1 and holders[0].startswith("imgsearch load on ") for holders, _ in seen)
    assert [repaired for _, repaired in seen] == [0, 0, 0]
    assert svc.writers.live_on(name) == [] and svc.images.unindexed_ids(name, 100) == []

    seen.clear()
    other = name
    name = unique("jobload")
    load.load_split(svc, name, data, "valid", Counter(), batch_size=4)
    assert [holders for holders, _ in seen] == [[], [], []]
    assert sum(repaired for _, repaired in seen) > 0  # the repair took the waiting rows
    assert svc.vectors.count(name) == svc.vectors.count(other) == 12
    svc.vectors.close()
    svc.images.close()
