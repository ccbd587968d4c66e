"""OCR at load time, OCR failures, and adds of collections without OCR (real RapidOCR; the
failure is injected into the engine because no real image makes RapidOCR raise on demand)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from datasets.formats import write_image_tsv
from datasets.text_images import TEXT_IMAGES, text_image_jpeg
from operations.ingest import Upload, add_images
from operations.load import load_split
from operations.ocr import ocr_enabled, ocr_store
from operations.ocr_engine import OcrEngine
from operations.progress import Counter
from operations.search import search_text
from tests.fixtures_stack import backend_settings
from tests.stack import jpeg, make_services, make_settings, unique

SPECS = {s.name: s for s in TEXT_IMAGES}


@pytest.fixture(scope="module")
def lite_ocr(tmp_path_factory):
    """Milvus Lite + SQLite with OCR on for new collections, shared by this module's OCR tests
    (each works in collections of its own), so one RapidOCR engine loads for all of them."""
    svc = make_services(make_settings(tmp_path_factory.mktemp("ocr"), ocr_enabled=True))
    yield svc
    svc.vectors.close()
    svc.images.close()


@pytest.fixture(params=["lite", "server"])
def ocr_services(request, tmp_path):
    if request.param == "lite":
        yield request.getfixturevalue("lite_ocr")
        return
    svc = make_services(backend_settings(request, tmp_path, request.param, ocr_enabled=True))
    yield svc
    svc.vectors.close()
    svc.images.close()


def test_load_reads_the_text_of_a_new_collection_with_ocr_enabled(ocr_services):
    svc = ocr_services
    data = svc.settings.data_root / "txt"
    data.mkdir(parents=True)
    images = [
        (11, text_image_jpeg(SPECS["phone_ad"])),
        (12, text_image_jpeg(SPECS["shop_sign"])),
        (13, jpeg(3)),
    ]
    write_image_tsv(data / "valid_imgs.tsv", images)
    collection = unique("load")
    report = load_split(svc, collection, data, "valid", Counter())
    assert report.loaded == 3 and report.ocr == {"read": 3, "failed": 0}
    assert ocr_enabled(svc, collection)
    outcome = search_text(svc, collection, "13812345678", top_k=3, mode="text")
    assert [m.row.id for m in outcome.matches] == [11]
    # Re-running the load reads nothing twice.
    assert load_split(svc, collection, data, "valid", Counter()).ocr == {"read": 0, "failed": 0}


def test_an_image_ocr_cannot_read_is_added_and_reported(lite_ocr, monkeypatch):
    svc = lite_ocr
    collection = unique("fail")
    from operations.collections import create_collection

    create_collection(svc, collection, ocr=True)
    real = OcrEngine._engine

    def flaky(self):
        engine = real(self)

        def call(pixels):
            if pixels.shape[0] == 48:  # the plain 48x48 image
                raise RuntimeError("model exploded")
            return engine(pixels)

        return call

    monkeypatch.setattr(OcrEngine, "_engine", flaky)
    uploads = [Upload("plain.jpg", jpeg(5)), Upload("phone.jpg", text_image_jpeg(SPECS["phone_ad"]))]
    plain, phone = add_images(svc, collection, uploads)
    assert plain.status == "added" and plain.ocr["status"] == "failed"
    assert "model exploded" in plain.ocr["error"]
    assert phone.status == "added" and phone.ocr["status"] == "ok"
    assert svc.images.count(collection) == 2
    record = ocr_store(svc).get(collection, [plain.id])[plain.id]
    assert record.status == "failed" and "model exploded" in record.error


def test_a_collection_without_ocr_never_starts_the_ocr_engine(lite_services):
    svc = lite_services
    collection = unique("plain")
    from operations.collections import create_collection

    assert create_collection(svc, collection).ocr is False
    [result] = add_images(svc, collection, [Upload("a.jpg", text_image_jpeg(SPECS["phone_ad"]))])
    assert result.status == "added" and result.ocr is None
    assert "ocr_engine" not in svc.extra


def test_ocr_enabled_setting_is_the_default_for_new_collections_only(tmp_path):
    settings = make_settings(tmp_path, ocr_enabled=True)
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as client:
        on, off = unique("on"), unique("off")
        assert client.post("/img/collections", json={"name": on}).json()["ocr"] is True
        assert client.post("/img/collections", json={"name": off, "ocr": False}).json()["ocr"] is False
        # creating an existing collection again leaves its OCR as it is
        assert client.post("/img/collections", json={"name": off}).json()["ocr"] is False


def test_the_ocr_pool_is_bounded():
    engine = OcrEngine(threads=1, queue=2)
    try:
        assert engine._slots._value == 3  # one reading, two waiting; the next submit blocks
    finally:
        engine.close()


def test_text_that_cannot_be_stored_is_reported_and_the_job_reads_it_later(lite_ocr, monkeypatch):
    from operations.collections import create_collection
    from operations.errors import DependencyUnavailable
    from operations.ocr import read_backlog
    from operations.stores.sql_ocr_store import SqlOcrStore

    svc = lite_ocr
    collection = unique("nostore")
    create_collection(svc, collection, ocr=True)
    real_put = SqlOcrStore.put

    def down(*args, **kwargs):
        raise DependencyUnavailable("sql", "connection refused")

    monkeypatch.setattr(SqlOcrStore, "put", down)
    [result] = add_images(svc, collection, [Upload("a.jpg", text_image_jpeg(SPECS["shop_sign"]))])
    assert result.status == "added" and result.ocr["status"] == "failed"
    assert "not stored" in result.ocr["error"]
    monkeypatch.setattr(SqlOcrStore, "put", real_put)
    assert read_backlog(svc, collection) == {"read": 1, "failed": 0}
    assert [m.row.id for m in search_text(svc, collection, "面馆", mode="text").matches] == [result.id]
