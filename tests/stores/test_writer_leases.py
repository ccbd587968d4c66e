"""Writer leases (operations/stores/sql_writer_leases.py) on SQLite and MariaDB: a command-line
load's lease is live while it is renewed, lapses when it is not (a dead process), is gone once
released, and a database where no writer ever held one answers no writers."""

from __future__ import annotations

import time

import pytest

from operations.stores.sql_pool import SqlPool
from operations.stores.sql_writer_leases import WriterLeases, held, this_process


@pytest.fixture(params=["sqlite", "mariadb"])
def leases(request, tmp_path):
    if request.param == "mariadb":
        pool = SqlPool(request.getfixturevalue("mariadb").create_database(), None, timeout_s=20, size=2)
    else:
        pool = SqlPool("", tmp_path / "leases.sqlite3", timeout_s=20, size=2)
    yield WriterLeases(pool)
    pool.close()


def _until(check, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_no_table_means_no_writers(leases):
    assert leases.live_on("images") == []


def test_a_lease_is_live_on_its_collection_only_until_released(leases):
    lease_id = leases.hold("images", "imgsearch load on host pid 1")
    assert leases.live_on("images") == ["imgsearch load on host pid 1"]
    assert leases.live_on("other") == []
    leases.release(lease_id)
    assert leases.live_on("images") == []


def test_a_lease_not_renewed_lapses_and_a_renewed_one_does_not(leases):
    dead = leases.hold("images", "dead", lease_s=1.0)
    alive = leases.hold("images", "alive", lease_s=1.0)
    assert leases.live_on("images") == ["alive", "dead"]
    for _ in range(4):  # 2 s: past the 1 s lease of the one not renewed
        time.sleep(0.5)
        assert leases.renew(alive, 1.0)
    assert leases.live_on("images") == ["alive"]
    leases.release(dead)
    assert not leases.renew(dead, 1.0)  # gone


def test_the_next_hold_deletes_rows_lapsed_over_a_day_ago_and_keeps_recent_ones(leases, monkeypatch):
    import operations.stores.sql_writer_leases as module

    old = leases.hold("images", "killed long ago", lease_s=-3.0)  # lapsed 3 s ago
    recent = leases.hold("images", "killed just now", lease_s=-0.5)
    monkeypatch.setattr(module, "LAPSED_KEPT_S", 2.0)  # "a day" is 2 s here
    new = leases.hold("images", "the next load")
    ids = {r[0] for r in leases.pool.query("SELECT id FROM writer_leases")}
    assert ids == {recent, new}
    assert old not in ids
    assert leases.live_on("images") == ["the next load"]


def test_held_renews_for_the_whole_block_and_releases_at_its_end(leases):
    with held(leases, "images", this_process("test"), lease_s=0.6):
        holder = leases.live_on("images")
        assert len(holder) == 1 and holder[0].startswith("test on ") and " pid " in holder[0]
        time.sleep(1.5)  # over twice the lease: only renewals keep it live
        assert leases.live_on("images") == holder
    assert leases.live_on("images") == []


def test_held_releases_when_the_block_fails(leases):
    with pytest.raises(RuntimeError), held(leases, "images", "failing load"):
        assert leases.live_on("images") == ["failing load"]
        raise RuntimeError("the load failed")
    assert leases.live_on("images") == []
