"""`load --bulk-import` (operations/bulk_import.py): the Milvus 2.3 server imports the vectors
from row-based JSON files; SQL rows as in a streaming load; counts checked; a re-run (after a
kill at the points that matter) never duplicates; Milvus Lite refuses before touching anything."""

from __future__ import annotations

import numpy as np
import pytest

from operations.bulk_import import BulkImporter, import_dir
from operations.domain import IndexSpec, VectorAttrs
from operations.errors import InvalidInput
from operations.load import load_split
from operations.progress import Counter
from scripts import cli
from tests.fixtures_stack import backend_settings
from tests.stack import make_services, make_settings, unique, write_dataset

N = 1500


@pytest.fixture
def server(request, tmp_path, milvus_server, mariadb):
    # The servers are named as arguments so that the tests using this fixture carry the
    # `services` marker (tests/conftest.py reads the fixture names).
    settings = backend_settings(request, tmp_path, "server", milvus_import_dir=str(tmp_path / "import"))
    svc = make_services(settings)
    data = settings.data_root / "ds"
    ids, feats = write_dataset(data, "valid", N, 32, seed=11)
    yield settings, svc, data, ids, feats
    svc.vectors.close()
    svc.images.close()


def _unindexed(svc, name: str) -> int:
    return len(svc.images.unindexed_ids(name, 10 * N))


def _counts(bulk: dict | None) -> dict:
    assert bulk is not None and set(bulk["waited_s"]) == {"task_s", "visible_s"}
    return {k: v for k, v in bulk.items() if k != "waited_s"}


def _strong_count(svc, name: str) -> int:
    def count(c):
        return c.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=30)

    rows = svc.vectors._call(count, name)
    return int(rows[0]["count(*)"])


def test_bulk_load_after_a_kill_settles_left_files_imports_the_rest_once_and_checks(server):
    """A bulk run 'killed' after starting a task (its rows imported, none marked) and while
    writing the next file (never submitted): the re-run marks the first file's rows, imports
    the rest (two more files) once, and a third run has nothing to do."""
    settings, svc, data, ids, feats = server
    name = unique("bulk")
    # The state such a kill leaves: the SQL rows written, none marked, no vector (made here
    # from a streaming load whose vectors are deleted again) ...
    load_split(svc, name, data, "valid", Counter(), index=IndexSpec("FLAT"))
    svc.vectors.delete(name, ids)
    svc.images.pool.execute(f"UPDATE {svc.images._table(name)} SET indexed = 0")
    assert _strong_count(svc, name) == 0 and _unindexed(svc, name) == N
    # ... then a first file submitted and a second one half written (vectors as the load
    # gives them: its renormalised features, which a streaming load stores too).
    want = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    killed = BulkImporter(svc, name, Counter(), lambda n: None, rows_per_file=600)
    attrs = [VectorAttrs("ds", (), 0)] * N
    killed.add(ids[:600], want[:600], attrs[:600])  # file 1 full: its task starts
    killed.add(ids[600:700], want[600:700], attrs[600:700])  # file 2 open, not submitted
    killed.close()  # the process dies here; the server goes on importing file 1
    assert len(list(killed.dir.glob("*.json"))) == 2

    r = load_split(svc, name, data, "valid", Counter(), bulk_import=True, bulk_file_rows=500)
    assert (r.loaded, r.already_loaded, r.failed) == (N - 600, 600, 0)
    # 900 rows in two files (the first closed at >= 500 rows), the killed run's file settled
    assert _counts(r.bulk_import) == {"files": 2, "recovered": 1, "upserted": 0}
    assert _strong_count(svc, name) == N and svc.images.count(name) == N and _unindexed(svc, name) == 0
    assert not list((import_dir(settings.milvus_import_dir) / name).iterdir())  # files removed
    # The server read back exactly the float32 vectors the files carried.
    picked = [ids[0], ids[650], ids[-1]]
    got = svc.vectors.get_vectors(name, picked)
    for i in picked:
        assert np.array_equal(got[i], want[ids.index(i)])
    assert svc.vectors.search(name, want[1200], 1)[0][0].id == ids[1200]

    r = load_split(svc, name, data, "valid", Counter(), bulk_import=True)
    assert (r.loaded, r.already_loaded) == (0, N)
    assert _counts(r.bulk_import) == {"files": 0, "recovered": 0, "upserted": 0}
    assert _strong_count(svc, name) == N


def test_rows_already_in_the_collection_are_upserted_not_imported_again(server):
    """A streaming load killed between its upserts and the marking: the vectors are in
    Milvus, the rows unmarked. A bulk re-run upserts those (no duplicate ids)."""
    settings, svc, data, ids, feats = server
    name = unique("bulkmix")
    load_split(svc, name, data, "valid", Counter(), index=IndexSpec("FLAT"))
    svc.images.pool.execute(
        f"UPDATE {svc.images._table(name)} SET indexed = 0 WHERE id <= ?", (ids[N // 2 - 1],)
    )
    r = load_split(svc, name, data, "valid", Counter(), bulk_import=True)
    assert r.loaded == N // 2 and _counts(r.bulk_import) == {"files": 0, "recovered": 0, "upserted": N // 2}
    assert _strong_count(svc, name) == N and _unindexed(svc, name) == 0


def test_milvus_lite_refuses_bulk_import_before_creating_anything(tmp_path):
    settings = make_settings(tmp_path)
    svc = make_services(settings)
    data = settings.data_root / "ds"
    write_dataset(data, "valid", 3, 32, seed=1)
    with pytest.raises(InvalidInput, match="bulk import needs a Milvus server"):
        load_split(svc, "lite_bulk", data, "valid", Counter(), bulk_import=True)
    assert not svc.vectors.has_collection("lite_bulk")
    svc.vectors.close()
    svc.images.close()


def test_cli_load_passes_bulk_import(tmp_path, monkeypatch, capsys):
    settings = make_settings(tmp_path)
    data = settings.data_root / "ds"
    write_dataset(data, "valid", 3, 32, seed=1)
    for key, value in {
        "MODEL_NAME": "tiny",
        "MODEL_ARCH": settings.model_arch,
        "MODEL_RANDOM_INIT": "true",
        "MILVUS_URI": settings.milvus_uri,
        "SQLITE_PATH": str(settings.sqlite_path),
    }.items():
        monkeypatch.setenv(key, value)
    args = ["load", "--dataset", str(data), "--split", "valid", "--collection", "clibulk"]
    assert cli.main([*args, "--bulk-import"]) == 2
    assert "bulk import needs a Milvus server" in capsys.readouterr().err
