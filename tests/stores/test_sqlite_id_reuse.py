"""SQLite image tables of older versions gave a deleted image's id to the next image; the
`upgrade-ids` rebuild stops that without changing a row (MySQL's AUTO_INCREMENT never reuses)."""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

import pytest

from operations.domain import ImageRow
from operations.stores.sql_image_store import SqlImageStore
from operations.stores.sql_pool import SqlPool
from scripts import cli
from tests.stack import jpeg

REPO = Path(__file__).resolve().parents[2]

# The image table as versions before AUTOINCREMENT made it (same columns and indexes).
LEGACY_DDL = [
    """CREATE TABLE "img_old" (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        mime TEXT NOT NULL DEFAULT 'image/jpeg',
        width INTEGER NOT NULL DEFAULT 0,
        height INTEGER NOT NULL DEFAULT 0,
        source TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '',
        external_id TEXT NULL,
        created_at INTEGER NOT NULL DEFAULT 0,
        added_at INTEGER NOT NULL DEFAULT 0,
        indexed INTEGER NOT NULL DEFAULT 0,
        image_b64 TEXT NOT NULL)""",
    'CREATE INDEX "ix_img_old_indexed" ON "img_old" (indexed)',
    'CREATE INDEX "ix_img_old_src" ON "img_old" (source, created_at)',
    'CREATE INDEX "ix_img_old_created" ON "img_old" (created_at)',
]
INDEXES = {"ix_img_old_indexed", "ix_img_old_src", "ix_img_old_created"}


def _row(seed: int) -> ImageRow:
    data = jpeg(seed)
    return ImageRow(
        id=0,
        sha256=hashlib.sha256(data).hexdigest(),
        image_b64=base64.b64encode(data).decode(),
        source="商城",
        tags=("红色", "a_b"),
        external_id=f"sku-{seed}",
        created_at=1000 + seed,
    )


def _legacy_store(path: Path) -> SqlImageStore:
    store = SqlImageStore(SqlPool("", path, 5, 2))
    for statement in LEGACY_DDL:
        store.pool.execute(statement)
    return store


def _indexes(store: SqlImageStore) -> set[str]:
    rows = store.pool.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'img_old'")
    return {r[0] for r in rows if not r[0].startswith("sqlite_autoindex")}


def test_an_older_table_is_rebuilt_so_that_a_deleted_id_is_never_given_again(tmp_path):
    store = _legacy_store(tmp_path / "i.sqlite3")
    ids = [store.insert_new("old", _row(i))[0] for i in range(1, 4)]
    assert ids == [1, 2, 3] and store.reuses_ids("old")
    store.delete("old", [3])
    assert store.insert_new("old", _row(4))[0] == 3  # what the rebuild is for: id 3 again
    store.mark_indexed("old", [1])
    before = store.get_rows("old", [1, 2, 3], with_image=True)

    assert store.stop_id_reuse("old") == 3
    assert not store.reuses_ids("old")
    assert store.get_rows("old", [1, 2, 3], with_image=True) == before  # every column, images included
    assert store.unindexed_ids("old", 10) == [2, 3]
    assert _indexes(store) == INDEXES
    assert store.pool.query("SELECT name FROM sqlite_master WHERE name LIKE '%upgrade%'") == []

    store.delete("old", [3])
    assert store.insert_new("old", _row(5))[0] == 4  # not 3 again
    assert store.stop_id_reuse("old") is None  # done once
    fresh = SqlImageStore(store.pool)  # a process of this version: same answers
    assert not fresh.reuses_ids("old") and fresh.count("old") == 3
    store.close()


def test_a_failed_rebuild_leaves_the_older_table_as_it_was(tmp_path, monkeypatch):
    store = _legacy_store(tmp_path / "i.sqlite3")
    for i in range(1, 4):
        store.insert_new("old", _row(i))
    before = store.get_rows("old", [1, 2, 3], with_image=True)
    # The rebuild's index statements come last, after the copy, the drop and the rename.
    import operations.stores.sql_image_store as sis

    real = sis._ddl
    monkeypatch.setattr(sis, "_ddl", lambda d, t: [*real(d, t)[:1], "CREATE INDEX broken ON nowhere (x)"])
    with pytest.raises(Exception, match="nowhere"):
        store.stop_id_reuse("old")
    monkeypatch.undo()
    assert store.reuses_ids("old")
    assert store.get_rows("old", [1, 2, 3], with_image=True) == before
    assert _indexes(store) == INDEXES
    assert store.stop_id_reuse("old") == 3
    store.close()


def test_using_an_older_table_warns_once_with_the_command(tmp_path, caplog):
    store = _legacy_store(tmp_path / "i.sqlite3")
    store.ensure_collection("new")
    with caplog.at_level(logging.WARNING, logger="operations.stores.sql_image_store"):
        store.count("old")
        store.count("old")
        store.count("new")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "python -m scripts.cli upgrade-ids old" in warned[0], warned
    store.close()


def test_the_command_line_rebuilds_the_table_of_the_embedded_default(tmp_path, monkeypatch, capsys):
    for k, v in {
        "MILVUS_URI": str(tmp_path / "milvus.db"),
        "SQLITE_PATH": str(tmp_path / "images.sqlite3"),
        "MODEL_NAME": "demo-tiny",
        "MODEL_CHECKPOINT": str(REPO / "models" / "demo" / "demo-tiny.pt"),
        "MODEL_ARCH": str(REPO / "config" / "model_configs" / "demo-tiny.json"),
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)  # no .env of the repository is read
    store = _legacy_store(tmp_path / "images.sqlite3")
    store.insert_new("old", _row(1))
    store.close()

    assert cli.main(["upgrade-ids", "old"]) == 0
    assert capsys.readouterr().out.strip() == (
        "old: table rebuilt, 1 rows; a deleted image's id is never given again"
    )
    assert cli.main(["upgrade-ids", "old"]) == 0
    assert "old: nothing to do" in capsys.readouterr().out
    assert cli.main(["upgrade-ids", "nosuch"]) != 0
