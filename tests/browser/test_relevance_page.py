"""The page's relevance controls in headless Chromium: 相关 / 可能相关 with the rest behind
"more", 更像这个 / 不要这种 searching again with feedback, order by date. Screenshots go to
tests/screenshots/ (git-ignored)."""

from __future__ import annotations

import pytest

from tests.browser.support import (
    ServerThread,
    browser_available,
    make_driver,
    quit_driver,
    screenshot,
    site_settings,
    wait_until,
)

pytestmark = pytest.mark.browser

_missing = browser_available()
if _missing:
    pytest.skip(f"browser tests need Chromium: {_missing}", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402  (after the skip: selenium may be absent)
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

N_IMAGES = 120


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from app.main import create_app
    from datasets.demo_generator import generate_split, write_split
    from operations.factory import build_services
    from operations.load import load_split
    from operations.progress import Counter

    root = tmp_path_factory.mktemp("relsite")
    data = generate_split("test", N_IMAGES, 7)
    write_split(data, root / "data" / "demo")
    settings = site_settings(root)
    if settings.model_name != "demo-tiny":
        pytest.skip("the relevance page needs the calibrated demo model")
    svc = build_services(settings)
    report = load_split(svc, "demo", root / "data" / "demo", "test", Counter())
    assert report.loaded == N_IMAGES
    server = ServerThread(create_app(settings, svc)).start()
    try:
        yield server.url, data
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
    url, _ = site
    driver.get(url + "/static/style.css")
    driver.execute_script("localStorage.clear()")
    driver.get(url + "/")
    wait_until(
        lambda: driver.execute_script(
            "return document.body.dataset.ready === 'true'"
            " && document.getElementById('collection-select').dataset.loaded === 'true'"
        ),
        message="the page to load",
    )
    yield driver
    screenshot(driver, request.node.name)
    errors = [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
    ]
    assert not errors, errors


def seq(d) -> int:
    return int(d.find_element(By.ID, "results").get_attribute("data-seq") or 0)


def search(d, query: str, top_k: int = 30) -> None:
    box = d.find_element(By.ID, "topk-input")
    box.clear()
    box.send_keys(str(top_k))
    before = seq(d)
    q = d.find_element(By.ID, "query-input")
    q.clear()
    q.send_keys(query, Keys.ENTER)
    wait_until(lambda: seq(d) > before, 20, message="a search outcome")


def cards(d, visible_only: bool = False) -> list:
    found = d.find_elements(By.CSS_SELECTOR, "#results [data-testid=result]")
    return [c for c in found if c.is_displayed()] if visible_only else found


def click_and_wait(d, element) -> None:
    before = seq(d)
    element.click()
    wait_until(lambda: seq(d) > before, 20, message="the search again")


def test_relevant_and_maybe_shown_rest_behind_more(page):
    d = page
    search(d, "纯浅绿色背景上，左边有一个红色圆", 30)
    assert d.find_element(By.ID, "results").get_attribute("data-calibrated") == "true"
    all_cards = cards(d)
    shown = cards(d, visible_only=True)
    assert len(all_cards) == 30 and 0 < len(shown) < 30
    for c in shown:
        assert c.get_attribute("data-tier") in ("relevant", "maybe")
        label = c.find_element(By.CSS_SELECTOR, "[data-testid=result-tier]").text
        assert label in ("相关", "可能相关")
        assert c.find_element(By.CSS_SELECTOR, "[data-testid=result-relevance]").text.startswith("相关度 ")
    more = d.find_element(By.ID, "results-more")
    assert more.is_displayed() and str(30 - len(shown)) in more.text
    screenshot(d, "test_relevance_tiers_collapsed")
    more.click()
    wait_until(lambda: len(cards(d, visible_only=True)) == 30, message="the rest to show")
    assert not more.is_displayed()
    assert {c.get_attribute("data-tier") for c in cards(d)} >= {"other"}


def test_more_like_this_and_not_this_search_again_with_feedback(page):
    d = page
    search(d, "红色", 12)
    first = cards(d, visible_only=True)[0]
    liked = int(first.get_attribute("data-id"))
    click_and_wait(d, first.find_element(By.CSS_SELECTOR, "[data-testid=more-like]"))
    bar = d.find_element(By.ID, "feedback-bar")
    assert bar.is_displayed() and bar.get_attribute("data-positive") == "1"
    ids = [int(c.get_attribute("data-id")) for c in cards(d)]
    assert liked not in ids and len(ids) == 12
    disliked_card = cards(d, visible_only=True)[0]
    disliked = int(disliked_card.get_attribute("data-id"))
    click_and_wait(d, disliked_card.find_element(By.CSS_SELECTOR, "[data-testid=less-like]"))
    assert bar.get_attribute("data-negative") == "1" and bar.get_attribute("data-positive") == "1"
    assert disliked not in [int(c.get_attribute("data-id")) for c in cards(d)]
    screenshot(d, "test_relevance_feedback")
    click_and_wait(d, d.find_element(By.ID, "feedback-clear"))
    assert not bar.is_displayed()
    assert liked in [int(c.get_attribute("data-id")) for c in cards(d)]


def test_order_by_newest_and_auto_cut(page, site):
    d = page
    Select(d.find_element(By.ID, "order-select")).select_by_value("newest")
    search(d, "蓝色", 15)
    dates = [int(c.get_attribute("data-id")) for c in cards(d)]
    assert len(dates) == 15
    status = d.find_element(By.ID, "status-text").text
    assert "从新到旧" in status
    d.find_element(By.ID, "cut-auto").click()
    search(d, "蓝色 -红色", 30)
    assert 1 <= len(cards(d)) < 30
