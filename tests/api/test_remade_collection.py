"""Another replica drops a collection and makes it again under the same name, for another
model of the same dimension: this process described the collection before and must not go
on writing or searching it with the old model. An add asks the server afresh before it
encodes, and its vector write refuses (409, nothing stored) a collection made again while it
ran; searches describe it again within DESCRIPTION_RECHECK_S. Two services on the Milvus 2.3
server and MariaDB, as two API replicas run; on Milvus Lite one process owns the file, so
there is no other replica."""

from __future__ import annotations

import time

import numpy as np
import pytest

from operations.collections import create_collection, drop_collection
from operations.domain import ImageRow
from operations.errors import Conflict
from operations.images import check_image
from operations.ingest import HOLDER_DEAD_AFTER_S, Upload, add_images, repair_unindexed
from operations.load import load_split
from operations.progress import Counter
from operations.search import search_image, search_text
from tests.fixtures_stack import backend_settings
from tests.stack import TINY_ARCH, jpeg, make_services, unique, write_dataset

pytestmark = pytest.mark.services

SECOND_MODEL = {"tiny-b": {"arch": str(TINY_ARCH), "random_init": True, "seed": 7}}


@pytest.fixture
def replicas(request, tmp_path, milvus_server, mariadb):
    settings = backend_settings(
        request, tmp_path, "server", extra_models=SECOND_MODEL, milvus_import_dir=str(tmp_path / "import")
    )
    pair = make_services(settings), make_services(settings)
    yield pair
    for s in pair:
        s.close_serving()
        s.vectors.close()
        s.images.close()


def _add(svc, name: str, seed: int) -> int:
    [result] = add_images(svc, name, [Upload(f"{seed}.jpg", jpeg(seed))])
    assert result.status == "added", result
    return int(result.id)


def _remade_by_other(monkeypatch, store, method: str, other, name: str, seeds, *, before: bool = False):
    """Patch `store.method` so that at its first call (before or after the real one) the other
    replica drops `name`, makes it again with the same model and adds jpeg(seed) for each seed:
    returns the list that then holds the ids those images got."""
    real = getattr(store, method)
    theirs: list[int] = []

    def remake_once() -> None:
        if not theirs:
            drop_collection(other, name)
            create_collection(other, name)
            theirs.extend(_add(other, name, seed) for seed in seeds)

    def patched(*args, **kwargs):
        if before:
            remake_once()
        out = real(*args, **kwargs)
        if not before:
            remake_once()
        return out

    monkeypatch.setattr(store, method, patched)
    return theirs


def test_an_add_after_another_replica_remade_the_collection_uses_its_new_model(replicas):
    svc, other = replicas
    name = unique()
    create_collection(svc, name)
    # svc has described it (model "tiny") and keeps that description however slow this run
    # is: the add's own look is what is tested, not DESCRIPTION_RECHECK_S.
    svc.vectors.description_recheck_s = 3600.0
    _add(svc, name, 1)
    drop_collection(other, name)
    create_collection(other, name, model="tiny-b")
    _add(other, name, 2)
    assert svc.encoders.get("tiny").encode_texts(["红"]).tolist() != (
        svc.encoders.get("tiny-b").encode_texts(["红"]).tolist()
    )  # two models in truth, not two names of one

    # svc's description says "tiny"; the add asks the server first and encodes with "tiny-b".
    mine = _add(svc, name, 3)
    assert other.vectors.count(name) == 2
    found = search_image(other, name, data=jpeg(3), top_k=1)
    assert found.model == "tiny-b"
    assert found.matches[0].row.id == mine and found.matches[0].score == pytest.approx(1.0, abs=1e-4)


def test_searches_follow_another_replicas_new_collection_within_the_recheck(replicas):
    svc, other = replicas
    name = unique()
    create_collection(svc, name)
    _add(svc, name, 1)
    assert search_text(svc, name, "红色").model == "tiny"
    svc.vectors.description_recheck_s = 0.5  # DESCRIPTION_RECHECK_S, shortened for the test
    drop_collection(other, name)
    create_collection(other, name, model="tiny-b")
    for seed in (11, 12, 13):
        _add(other, name, seed)
    time.sleep(0.6)

    mine, theirs = search_text(svc, name, "红色", top_k=3), search_text(other, name, "红色", top_k=3)
    assert mine.model == theirs.model == "tiny-b"
    assert [m.row.id for m in mine.matches] == [m.row.id for m in theirs.matches]
    assert np.allclose([m.score for m in mine.matches], [m.score for m in theirs.matches], atol=1e-5)


def test_a_remake_while_an_add_encodes_refuses_its_write_and_spares_the_new_images(replicas, monkeypatch):
    """The re-make (same model this time) lands between the add's SQL insert and its vector
    write: the write is refused (another making of the collection), and taking the add's row
    back must not delete the new collection's images that now carry the same ids."""
    svc, other = replicas
    name = unique()
    create_collection(svc, name)
    _add(svc, name, 1)
    theirs = _remade_by_other(monkeypatch, svc.vectors, "upsert", other, name, (21, 22), before=True)
    with pytest.raises(Conflict, match="made again"):
        add_images(svc, name, [Upload("3.jpg", jpeg(3))])
    assert theirs == [1, 2]  # the add's row had id 2 in the table that was dropped
    time.sleep(1.5)  # past a retry of the cleanups' threads
    assert sorted(other.images.get_rows(name, theirs)) == theirs
    assert other.vectors.existing_ids(name, theirs) == set(theirs)


@pytest.mark.parametrize("bulk", [False, True], ids=["streaming", "bulk import"])
def test_a_remake_while_a_load_runs_refuses_its_writes_and_spares_the_new_images(replicas, monkeypatch, bulk):
    """Another replica makes the collection again (the same model) once a load has written its
    first rows: the load's vector writes are refused, so its vectors never land on the new
    collection's images, which hold the same ids as the load's first rows."""
    svc, other = replicas
    name = unique()
    data = svc.settings.data_root / "ds"
    ids, _ = write_dataset(data, "valid", 300, 32, seed=5)
    theirs = _remade_by_other(monkeypatch, svc.images, "insert_rows", other, name, (21, 22))
    with pytest.raises(Conflict, match="made again"):
        # One batch: its rows go to the table that is then dropped, before any vector write.
        load_split(
            svc, name, data, "valid", Counter(), batch_size=len(ids), bulk_import=bulk, bulk_file_rows=100
        )
    assert theirs == [1, 2] and set(theirs) <= set(ids)
    assert other.vectors.existing_ids(name, ids) == set(theirs)  # no vector of the load's
    found = search_image(other, name, data=jpeg(21), top_k=1)
    assert found.matches[0].row.id == theirs[0] and found.matches[0].score == pytest.approx(1.0, abs=1e-4)


def test_a_remake_while_a_repair_encodes_refuses_its_write_and_spares_the_new_images(replicas, monkeypatch):
    """The periodic repair (operations/unindexed_repair.py) indexes a dead add's row; another
    replica makes the collection again while the repair encodes it: the repair's write is
    refused and the new collection's image with the same id keeps its own vector."""
    svc, other = replicas
    name = unique()
    create_collection(svc, name)
    img = check_image(jpeg(31), svc.settings.max_upload_bytes, svc.settings.max_image_pixels)
    old = int(time.time() - HOLDER_DEAD_AFTER_S - 60)
    row = ImageRow(None, img.sha256, img.b64, img.mime, img.width, img.height, created_at=old, added_at=old)
    dead, created = svc.images.insert_new(name, row)  # a dead add's row, without its vector
    assert created
    # After the repair's last look at its rows (none indexed by a live writer meanwhile), just
    # before its vector write.
    theirs = _remade_by_other(monkeypatch, svc.images, "indexed_ids", other, name, (32,))
    with pytest.raises(Conflict, match="made again"):
        repair_unindexed(svc, name, older_than_s=HOLDER_DEAD_AFTER_S)
    assert theirs == [dead]  # the new collection's first image has the dead row's id
    found = search_image(other, name, data=jpeg(32), top_k=1)
    assert found.matches[0].row.id == dead and found.matches[0].score == pytest.approx(1.0, abs=1e-4)
