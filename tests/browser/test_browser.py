"""The web page at / in a real headless Chromium, against a real uvicorn server.

One server and one browser serve the whole module: the server runs the app
in a thread over a tmp Milvus Lite file, a tmp SQLite file and a tmp
DATA_ROOT holding a small demo split. Each test saves a screenshot to
tests/screenshots/<test>.png (git-ignored).
"""

from __future__ import annotations

import re
import time

import pytest

from tests.browser.support import (
    ServerThread,
    Site,
    browser_available,
    clear_viewport,
    http_json,
    make_driver,
    quit_driver,
    screenshot,
    set_phone_viewport,
    site_settings,
    wait_until,
)

pytestmark = pytest.mark.browser

_missing = browser_available()
if _missing:
    pytest.skip(f"browser tests need Chromium: {_missing}", allow_module_level=True)

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

N_IMAGES = 40
API_KEY = "browser-test-key"
INLINE_ADD_LIMIT = 4  # a bulk add of more files than this becomes a background job
SCORE_TEXT = re.compile(r"^相似度 -?\d+\.\d{3}$")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from app.main import create_app
    from datasets.demo_generator import generate_split, write_split
    from operations.collections import create_collection
    from operations.factory import build_services
    from operations.load import load_split
    from operations.progress import Counter

    root = tmp_path_factory.mktemp("site")
    data = generate_split("valid", N_IMAGES)
    write_split(data, root / "data" / "demo")
    settings = site_settings(root, api_key=API_KEY, inline_add_limit=INLINE_ADD_LIMIT)
    svc = build_services(settings)
    progress = Counter()
    report = load_split(svc, "demo", root / "data" / "demo", "valid", progress)
    assert report.loaded == N_IMAGES and report.failed == 0, report
    create_collection(svc, "empty")
    create_collection(svc, "uploads")
    server = ServerThread(create_app(settings, svc)).start()
    try:
        yield Site(
            url=server.url,
            settings=settings,
            services=svc,
            api_key=API_KEY,
            demo_ids=list(data.image_ids),
            data_root=root / "data",
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def driver():
    drv = make_driver()
    try:
        yield drv
    finally:
        quit_driver(drv)


@pytest.fixture
def page(site, driver, request):
    """The page freshly opened (no remembered collection or key); a screenshot at the end."""
    driver.get(site.url + "/static/style.css")  # same origin, to clear what an earlier test stored
    driver.execute_script("localStorage.clear()")
    open_page(driver, site)
    yield driver
    screenshot(driver, request.node.name)
    clear_viewport(driver)
    # No script errors (HTTP errors the test provoked are logged as "Failed to load resource"; those are fine).
    errors = [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert not errors, errors


def open_page(driver, site):
    driver.get(site.url + "/")
    wait_until(
        lambda: driver.execute_script(
            "return document.body.dataset.ready === 'true'"
            " && document.getElementById('collection-select').dataset.loaded === 'true'"
        ),
        message="the page to load its collections",
    )


# ------------------------------------------------------------------ helpers


def by_id(driver, element_id):
    return driver.find_element(By.ID, element_id)


def seq(driver) -> int:
    return int(by_id(driver, "results").get_attribute("data-seq") or 0)


def wait_render(driver, before: int, timeout: float = 20.0):
    wait_until(
        lambda: seq(driver) > before,
        timeout,
        message=lambda: f"a search outcome (status: {by_id(driver, 'status').text!r})",
    )


def results(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#results [data-testid=result]")


def result_ids(driver) -> list[int]:
    return [int(r.get_attribute("data-id")) for r in results(driver)]


def status(driver) -> tuple[str, str]:
    el = by_id(driver, "status")
    return el.get_attribute("data-state"), el.text


def text_search(driver, query: str):
    before = seq(driver)
    box = by_id(driver, "query-input")
    box.clear()
    box.send_keys(query, Keys.ENTER)
    wait_render(driver, before)


def wait_thumbnails(driver):
    """Every thumbnail in the viewport has loaded (the others are lazy)."""
    wait_until(
        lambda: driver.execute_script(
            "const imgs = [...document.querySelectorAll('#results .thumb-img')]"
            "  .filter(i => i.getBoundingClientRect().top < window.innerHeight);"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"
        ),
        message="every thumbnail in view to load",
    )


def strip_addresses(text: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def select_collection(driver, name: str):
    Select(by_id(driver, "collection-select")).select_by_value(name)


# -------------------------------------------------------------------- tests


def test_text_search_shows_scored_thumbnails(page, site):
    d = page
    top_k = by_id(d, "topk-input")
    top_k.clear()
    top_k.send_keys("8")
    # Collection selector lists every collection with its model and image count.
    options = {
        o.get_attribute("value"): o.text
        for o in by_id(d, "collection-select").find_elements(By.TAG_NAME, "option")
    }
    assert set(options) >= {"demo", "empty"}
    assert site.settings.model_name in options["demo"] and f"{N_IMAGES} 张" in options["demo"]

    text_search(d, "左边有一个红色的圆形")
    state, text = status(d)
    assert state == "results", text
    cards = results(d)
    assert len(cards) == 8
    assert by_id(d, "results").get_attribute("data-kind") == "text"
    for rank, card in enumerate(cards, 1):
        score = card.find_element(By.CSS_SELECTOR, "[data-testid=result-score]").text
        assert SCORE_TEXT.match(score), score
        assert "%" not in card.text
        assert card.find_element(By.CSS_SELECTOR, "[data-testid=result-rank]").text == f"#{rank}"
        assert int(card.get_attribute("data-id")) in site.demo_ids
    scores = [float(c.get_attribute("data-score")) for c in cards]
    assert scores == sorted(scores, reverse=True)

    # Space is reserved before the thumbnails arrive: square boxes, sized <img>, no movement when they load.
    first_box = cards[0].find_element(By.CSS_SELECTOR, ".thumb")
    img = cards[0].find_element(By.CSS_SELECTOR, "img")
    assert img.get_dom_attribute("width") == "256" and img.get_dom_attribute("height") == "256"
    last_rect_before = cards[-1].rect
    wait_thumbnails(d)
    assert cards[-1].rect == last_rect_before
    assert abs(first_box.rect["width"] - first_box.rect["height"]) <= 1
    assert "thumbnail" not in img.get_attribute("src") and "size=256" in img.get_attribute("src")

    # Clicking a result opens the lightbox with the full image and its metadata; Escape closes it.
    first_id = cards[0].get_attribute("data-id")
    first_box.click()
    modal = by_id(d, "image-modal")
    wait_until(lambda: modal.get_attribute("open") is not None, message="the modal to open")
    wait_until(
        lambda: by_id(d, "modal-meta").get_attribute("data-loaded") == "true", message="image metadata"
    )
    meta = by_id(d, "modal-meta").text
    assert first_id in meta and "demo" in meta and "SHA-256" in meta
    assert by_id(d, "modal-image").get_attribute("src").endswith(f"/img/images/demo/{first_id}")
    wait_until(
        lambda: d.execute_script("return document.getElementById('modal-image').naturalWidth > 0"),
        message="the full image",
    )
    screenshot(d, "test_text_search_modal")
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_until(lambda: modal.get_attribute("open") is None, message="Escape to close the modal")
    assert d.switch_to.active_element == first_box  # focus goes back to what opened it


def test_image_upload_search(page, site, tmp_path):
    from datasets.demo_generator import encode_jpeg, render_scene, simple_scene

    photo = tmp_path / "query-photo.jpg"
    photo.write_bytes(encode_jpeg(render_scene(simple_scene("circle", "red", "left"), 3)))
    d = page
    before = seq(d)
    by_id(d, "image-input").send_keys(str(photo))
    wait_render(d, before)
    state, text = status(d)
    assert state == "results", text
    assert by_id(d, "results").get_attribute("data-kind") == "image"
    cards = results(d)
    assert len(cards) == 12  # the default top-k
    for card in cards:
        assert SCORE_TEXT.match(card.find_element(By.CSS_SELECTOR, "[data-testid=result-score]").text)
    assert by_id(d, "query-preview").is_displayed()
    assert "query-photo.jpg" in by_id(d, "query-summary").text
    wait_thumbnails(d)


def test_find_similar_excludes_the_image(page, site):
    d = page
    text_search(d, "中间是一个蓝色的正方形")
    cards = results(d)
    assert cards
    target = cards[0].get_attribute("data-id")
    before = seq(d)
    cards[0].find_element(By.CSS_SELECTOR, "[data-testid=find-similar]").click()
    wait_render(d, before)
    state, text = status(d)
    assert state == "results", text
    res = by_id(d, "results")
    assert res.get_attribute("data-kind") == "similar"
    assert res.get_attribute("data-query-id") == target
    ids = result_ids(d)
    assert ids and int(target) not in ids
    assert len(ids) == 12
    assert f"图片 {target}" in by_id(d, "query-summary").text
    wait_thumbnails(d)


def test_load_from_panel_reaches_succeeded(page, site):
    d = page
    by_id(d, "load-dataset").clear()
    by_id(d, "load-dataset").send_keys("demo")
    by_id(d, "load-split").clear()
    by_id(d, "load-split").send_keys("valid")
    by_id(d, "load-collection").send_keys("loaded")

    # Without the key the server refuses; its message is shown and the key field opens.
    by_id(d, "load-start").click()
    msg = wait_until(
        lambda: by_id(d, "panel-message").is_displayed() and by_id(d, "panel-message").text,
        message="the 401 message",
    )
    assert "X-API-Key" in msg
    key = by_id(d, "api-key")
    assert key.is_displayed()
    key.send_keys(site.api_key)

    by_id(d, "load-start").click()
    job = by_id(d, "job-progress")
    wait_until(
        lambda: job.get_attribute("data-state") in ("succeeded", "failed", "cancelled", "interrupted"),
        timeout=60,
        message=lambda: f"the load to finish ({job.text!r})",
    )
    assert job.get_attribute("data-state") == "succeeded", job.text
    assert int(job.get_attribute("data-processed")) == int(job.get_attribute("data-total")) == N_IMAGES
    assert job.get_attribute("data-failed") == "0"
    assert f"已处理 {N_IMAGES} / {N_IMAGES}" in by_id(d, "job-counts").text
    assert by_id(d, "job-bar").get_attribute("aria-valuenow") == "100"
    assert d.execute_script("return localStorage.getItem('imgsearch.apiKey')") == site.api_key

    # The recent-jobs list and the collection selector catch up.
    wait_until(
        lambda: d.find_elements(By.CSS_SELECTOR, "#jobs-list [data-testid=job-item][data-state=succeeded]"),
        message="the job in the recent list",
    )
    wait_until(
        lambda: any(
            o.get_attribute("value") == "loaded" and f"{N_IMAGES} 张" in o.text
            for o in by_id(d, "collection-select").find_elements(By.TAG_NAME, "option")
        ),
        message="the new collection in the selector",
    )
    # The collection being viewed (demo, not empty) stays selected.
    assert by_id(d, "collection-select").get_attribute("value") == "demo"
    status_code, body = http_json(f"{site.url}/img/collections/loaded/count")
    assert status_code == 200 and body["images"] == N_IMAGES


def test_error_states(page, site, tmp_path):
    d = page
    # A bad upload: the server's own message is shown.
    bogus = tmp_path / "notes.txt"
    bogus.write_bytes(b"this is not an image at all\n" * 10)
    import httpx

    expected = httpx.post(
        f"{site.url}/img/search/image",
        files={"file": ("notes.txt", bogus.read_bytes())},
        data={"collection": "demo"},
    ).json()["error"]["message"]
    before = seq(d)
    by_id(d, "image-input").send_keys(str(bogus))
    wait_render(d, before)
    state, text = status(d)
    assert state == "error"
    # (PIL's message names a BytesIO object by address; compare without it.)
    assert strip_addresses(expected) in strip_addresses(text), (expected, text)
    assert not results(d)
    screenshot(d, "test_error_states_bad_upload")

    # An empty collection says so as soon as it is picked, and after a search too.
    select_collection(d, "empty")
    wait_until(lambda: status(d)[0] == "empty-collection", message="the empty state")
    assert "该集合还没有图片" in status(d)[1]
    text_search(d, "一个红色的圆形")
    state, text = status(d)
    assert state == "empty-collection" and "该集合还没有图片" in text
    assert not results(d)
    screenshot(d, "test_error_states_empty_collection")

    # Nothing above the minimum similarity.
    select_collection(d, "demo")
    by_id(d, "min-score-input").send_keys("0.99")
    text_search(d, "一个红色的圆形")
    state, text = status(d)
    assert state == "no-results" and "0.99" in text, text


def test_busy_service_is_retried_and_network_error_shown(page, site):
    d = page
    # The first search answers 503 with Retry-After: 1 (as the API does when Milvus or SQL is down).
    d.execute_script("""
        const realFetch = window.fetch;
        window.__busyLeft = 1;
        window.fetch = (url, opts) => {
          if (String(url).startsWith('/img/search') && window.__busyLeft > 0) {
            window.__busyLeft--;
            const body = JSON.stringify({error: {code: 'dependency_unavailable',
                                                 message: 'milvus unavailable: connection refused'}});
            return Promise.resolve(new Response(body, {status: 503,
                headers: {'Content-Type': 'application/json', 'Retry-After': '1'}}));
          }
          return realFetch(url, opts);
        };
        window.__realFetch = realFetch;
    """)
    before = seq(d)
    box = by_id(d, "query-input")
    box.send_keys("右上角有一个黄色的星形", Keys.ENTER)
    wait_until(lambda: status(d)[0] == "busy", message="the busy state")
    assert "服务繁忙，正在重试…" in status(d)[1]
    screenshot(d, "test_busy_retrying")
    wait_render(d, before)
    state, text = status(d)
    assert state == "results", text
    assert results(d)

    # The network goes away: a clear message and a retry button that works once it is back.
    d.execute_script("window.fetch = () => Promise.reject(new TypeError('Failed to fetch'));")
    before = seq(d)
    box.send_keys(Keys.ENTER)
    wait_render(d, before)
    state, text = status(d)
    assert state == "network" and "网络错误" in text, text
    retry = by_id(d, "status-retry")
    assert retry.is_displayed()
    screenshot(d, "test_network_error")
    d.execute_script("window.fetch = window.__realFetch;")
    before = seq(d)
    retry.click()
    wait_render(d, before)
    assert status(d)[0] == "results"


def test_bulk_add_inline_and_as_a_job(page, site, tmp_path):
    from datasets.demo_generator import encode_jpeg, render_scene, simple_scene

    combos = [
        ("circle", "red"),
        ("square", "blue"),
        ("star", "yellow"),
        ("heart", "pink"),
        ("cross", "green"),
        ("diamond", "purple"),
    ]
    photos = []
    for i, (shape, colour) in enumerate(combos):
        path = tmp_path / f"photo-{i}.jpg"
        path.write_bytes(encode_jpeg(render_scene(simple_scene(shape, colour), 100 + i)))
        photos.append(path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    d = page
    by_id(d, "api-key-box").click()
    by_id(d, "api-key").send_keys(site.api_key)
    by_id(d, "bulk-collection").send_keys("uploads")

    # A small batch is answered at once, file by file.
    by_id(d, "bulk-files").send_keys("\n".join(str(p) for p in photos[:2]))
    by_id(d, "bulk-start").click()
    box = by_id(d, "bulk-results")
    wait_until(lambda: box.is_displayed(), message="the inline add results")
    assert "已添加 2" in box.text and "photo-0.jpg" in box.text
    assert len(box.find_elements(By.CSS_SELECTOR, "[data-status=added]")) == 2

    # A larger one becomes a job; its failed item is listed with the reason.
    by_id(d, "bulk-files").send_keys("\n".join(str(p) for p in [*photos[2:], broken]))
    by_id(d, "bulk-start").click()
    job = by_id(d, "job-progress")
    wait_until(
        lambda: job.is_displayed() and job.get_attribute("data-state") in ("succeeded", "failed"),
        timeout=30,
        message=lambda: f"the add job to finish ({job.text!r})",
    )
    assert job.get_attribute("data-state") == "succeeded", job.text
    assert job.get_attribute("data-total") == "5"
    assert job.get_attribute("data-processed") == "4" and job.get_attribute("data-failed") == "1"
    failures = by_id(d, "job-failures")
    wait_until(lambda: failures.is_displayed(), message="the failed items")
    assert "broken.jpg" in failures.text or "000004" in failures.text, failures.text
    wait_until(
        lambda: any(
            o.get_attribute("value") == "uploads" and "6 张" in o.text
            for o in by_id(d, "collection-select").find_elements(By.TAG_NAME, "option")
        ),
        message="the collection count to catch up",
    )


def test_phone_width_has_no_horizontal_scroll(page, site):
    d = page
    set_phone_viewport(d, 375, 800)  # the page fixture screenshots, then resets it
    open_page(d, site)
    assert d.execute_script("return window.innerWidth") == 375
    # The search options start folded on a phone; unfolded they are one column.
    options = by_id(d, "search-options")
    assert options.get_attribute("open") is None
    by_id(d, "search-options-toggle").click()
    assert options.get_attribute("open") is not None
    text_search(d, "下方有一个绿色的三角形")
    d.execute_script("document.getElementById('results').scrollIntoView()")
    wait_thumbnails(d)
    assert d.execute_script("return document.documentElement.scrollWidth") <= 375
    # Columns as laid out: distinct left edges of the result cards and of the option fields.
    columns = d.execute_script(
        "return new Set([...document.querySelectorAll('#results .result')].map(e => e.getBoundingClientRect().left)).size"
    )
    assert columns == 2
    controls = d.execute_script(
        "return new Set([...document.querySelectorAll('.controls > .field')].map(e => e.getBoundingClientRect().left)).size"
    )
    assert controls == 1
    # Every control fits the screen.
    too_wide = d.execute_script("""
        return [...document.querySelectorAll('input:not(.visually-hidden), select, button')]
          .filter(e => e.offsetParent !== null)
          .filter(e => { const r = e.getBoundingClientRect(); return r.left < 0 || r.right > 375; })
          .map(e => e.id || e.dataset.testid || e.className);""")
    assert too_wide == []
    screenshot(d, "test_phone_width_results")
    by_id(d, "search-options-toggle").click()
    d.execute_script("window.scrollTo(0, 0)")
    # The modal fits too.
    results(d)[0].find_element(By.CSS_SELECTOR, ".thumb").click()
    wait_until(lambda: by_id(d, "modal-meta").get_attribute("data-loaded") == "true", message="metadata")
    time.sleep(0.2)
    rect = d.execute_script("return document.getElementById('image-modal').getBoundingClientRect().toJSON()")
    assert rect["left"] >= 0 and rect["right"] <= 375
    screenshot(d, "test_phone_width_modal")
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_until(lambda: by_id(d, "image-modal").get_attribute("open") is None, message="the modal to close")


def test_text_in_images_is_searched_and_shown(page, site):
    """A collection with OCR: a phone number written in an image finds it, the card shows the
    matched line, and the lightbox lists the recognised text."""
    from datasets.text_images import TEXT_IMAGES, text_image_jpeg
    from operations.collections import create_collection
    from operations.ingest import Upload, add_images

    d = page
    create_collection(site.services, "ocrshop", ocr=True)
    specs = {s.name: s for s in TEXT_IMAGES}
    added = add_images(
        site.services,
        "ocrshop",
        [Upload(f"{n}.jpg", text_image_jpeg(specs[n])) for n in ("phone_ad", "shop_sign", "price_tag_tea")],
    )
    phone_id = added[0].id
    open_page(d, site)
    select_collection(d, "ocrshop")
    text_search(d, "13812345678")
    cards = results(d)
    assert int(cards[0].get_attribute("data-id")) == phone_id
    match = cards[0].find_element(By.CSS_SELECTOR, "[data-testid=result-ocr-match]")
    assert match.is_displayed() and "13812345678" in match.text
    cards[0].find_element(By.CSS_SELECTOR, ".thumb").click()
    wait_until(lambda: by_id(d, "modal-ocr").get_attribute("data-loaded") == "true", message="the OCR text")
    assert "13812345678" in by_id(d, "modal-ocr-lines").text
    assert "专业开锁" in by_id(d, "modal-ocr-lines").text
    screenshot(d, "test_text_in_images_modal")
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
    # A collection without OCR shows no text section.
    select_collection(d, "demo")
    text_search(d, "红色")
    results(d)[0].find_element(By.CSS_SELECTOR, ".thumb").click()
    wait_until(lambda: by_id(d, "modal-meta").get_attribute("data-loaded") == "true", message="metadata")
    assert not by_id(d, "modal-ocr").is_displayed()
    d.switch_to.active_element.send_keys(Keys.ESCAPE)
