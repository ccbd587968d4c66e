"""The OCR text store: the same exact CJK substring search on SQLite and on a real MariaDB,
checked against a plain Python `in` over the same lines."""

from __future__ import annotations

import random

import pytest

from operations.stores.sql_image_store import SqlImageStore
from operations.stores.sql_ocr_store import OcrLine, SqlOcrStore, grams, normalize_text, query_grams
from operations.stores.sql_pool import SqlPool
from tests.stack import unique

BOX = ((0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (0.0, 5.0))


@pytest.fixture(params=["sqlite", "mariadb"])
def stores(request, tmp_path):
    if request.param == "sqlite":
        pool = SqlPool("", tmp_path / "o.sqlite3", 5, 4)
    else:
        pool = SqlPool(request.getfixturevalue("mariadb").create_database(), None, 5, 4)
    images, ocr = SqlImageStore(pool), SqlOcrStore(pool)
    yield images, ocr
    pool.close()


def line(text: str, confidence: float = 0.9) -> OcrLine:
    return OcrLine(text, BOX, confidence)


def test_normalisation_and_grams():
    assert normalize_text("特价 ￥３９.９ ABC") == "特价¥39.9abc"
    assert grams("苹果汁") == {"苹", "果", "汁", "苹果", "果汁"}
    assert query_grams("果") == {"果"} and query_grams("苹果汁") == {"苹果", "果汁"}


def test_enable_is_the_switch_and_drop_removes_it(stores):
    _, ocr = stores
    c = unique()
    assert not ocr.enabled(c)
    ocr.enable(c)
    ocr.enable(c)  # idempotent
    assert ocr.enabled(c)
    ocr.drop(c)
    assert not ocr.enabled(c)


def test_substring_search_is_exact_against_python(stores):
    _, ocr = stores
    c = unique()
    ocr.enable(c)
    rng = random.Random(7)
    alphabet = "苹果汁西瓜红茶龙井面馆电话微信号0123456789abAB😀"
    texts = {
        i: ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(2)]
        for i in range(1, 81)
    }
    for i, lines in texts.items():
        ocr.put(c, i, [line(t) for t in lines])
    queries = ["苹果", "果", "龙井", "0123", "ab", "AB", "😀", "面馆电", "微信号1", "茶茶", "苹果汁西"]
    for q in queries:
        got = {m.image_id for m in ocr.search(c, q, 1000, 10_000)}
        want = {i for i, lines in texts.items() if any(normalize_text(q) in normalize_text(t) for t in lines)}
        assert got == want, q
    # never across two lines: the lines of one image are separate texts
    ocr.put(c, 500, [line("前半"), line("后半")])
    assert {m.image_id for m in ocr.search(c, "半后", 10, 100)} == set()


def test_matches_report_the_line_and_rank_by_confidence(stores):
    _, ocr = stores
    c = unique()
    ocr.enable(c)
    ocr.put(c, 1, [line("店名 老王面馆", 0.7)])
    ocr.put(c, 2, [line("老王面馆 分店", 0.95), line("营业中", 0.99)])
    ocr.put(c, 3, [line("老王面馆", 0.3)], min_confidence=0.5)  # stored, not searchable
    found = ocr.search(c, "面馆", 10, 100)
    assert [(m.image_id, m.line) for m in found] == [(2, "老王面馆 分店"), (1, "店名 老王面馆")]
    assert ocr.get(c, [3])[3].lines[0].text == "老王面馆"


def test_a_new_read_replaces_the_old_and_failures_are_recorded(stores):
    _, ocr = stores
    c = unique()
    ocr.enable(c)
    ocr.put(c, 1, [line("旧文字")])
    ocr.put(c, 1, [line("新文字")])
    assert ocr.search(c, "旧", 10, 100) == [] and len(ocr.search(c, "新文字", 10, 100)) == 1
    ocr.put(c, 2, [], error="OCR failed: boom")
    rec = ocr.get(c, [1, 2])
    assert rec[1].status == "ok" and rec[2].status == "failed" and rec[2].error == "OCR failed: boom"
    assert ocr.counts(c) == {"ok": 1, "failed": 1}
    ocr.delete(c, [1])
    assert ocr.search(c, "新文字", 10, 100) == [] and list(ocr.get(c, [1, 2])) == [2]


def test_unread_ids_are_the_indexed_images_without_a_record(stores):
    images, ocr = stores
    from tests.stores.test_image_stores import _row

    c = unique()
    images.ensure_collection(c)
    ocr.enable(c)
    images.insert_rows(c, [_row(i) for i in range(1, 6)])
    images.mark_indexed(c, [1, 2, 3, 4])
    ocr.put(c, 2, [line("x")])
    assert ocr.unread_ids(c, 0, 10) == [1, 3, 4]
    assert ocr.unread_ids(c, 1, 1) == [3]
