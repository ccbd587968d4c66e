"""Helpers for the browser tests: a real uvicorn server in a thread, headless Chromium.

The server runs in this process (Milvus Lite allows one process per file),
built with `app.main.create_app(settings, services)` so a fixture can load
data with the very services the server uses before the first request.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.settings import REPO_ROOT, Settings

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
DEMO_CHECKPOINT = REPO_ROOT / "models" / "demo" / "demo-tiny.pt"
SCREENSHOTS = REPO_ROOT / "tests" / "screenshots"


def browser_available() -> str | None:
    """None when Chromium, chromedriver and selenium are there; else why not."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is not installed"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


def model_settings() -> dict:
    """The trained demo model when present, else the random tiny one (both load in a second)."""
    if DEMO_CHECKPOINT.is_file():
        return {
            "model_name": "demo-tiny",
            "model_checkpoint": DEMO_CHECKPOINT,
            "model_arch": str(REPO_ROOT / "config" / "model_configs" / "demo-tiny.json"),
        }
    return {
        "model_name": "tiny",
        "model_arch": str(REPO_ROOT / "tests" / "data" / "tiny-arch.json"),
        "model_random_init": True,
    }


def site_settings(root: Path, **overrides: object) -> Settings:
    """Settings isolated in `root`: Milvus Lite file, SQLite file, DATA_ROOT; no .env, no env API key."""
    values: dict = {
        **model_settings(),
        "device": "cpu",
        "milvus_uri": str(root / "milvus.db"),
        "sqlite_path": root / "images.sqlite3",
        "data_root": root / "data",
        "default_collection": "demo",
        "api_key": "",
        "extra_models": {},
        "mysql_url": "",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def start(self, timeout: float = 60.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn stopped before it started (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"uvicorn did not start on {self.url} within {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def http_json(
    url: str,
    method: str = "GET",
    body: dict | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict | list | None]:
    """(status, parsed JSON body) without raising on 4xx/5xx."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={
            "Accept": "application/json",
            **({"Content-Type": "application/json"} if data else {}),
            **(headers or {}),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def make_driver(width: int = 1280, height: int = 900):
    """Headless Chromium with a fresh profile; `driver.profile_dir` is removed by `quit_driver`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
        "--lang=zh-CN",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.profile_dir = profile
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def quit_driver(driver) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "profile_dir", ""), ignore_errors=True)


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> object:
    """Poll `predicate` until it returns something truthy; its value is returned."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 -- stale element while the page re-renders, etc.
            last_exc = exc
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise TimeoutError(
                f"timed out after {timeout} s waiting for {text}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        time.sleep(interval)


def set_phone_viewport(driver, width: int = 375, height: int = 800) -> None:
    """Emulate a phone viewport exactly (a headless window may refuse to be that narrow)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True},
    )


def clear_viewport(driver) -> None:
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def screenshot(driver, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


@dataclass
class Site:
    url: str
    settings: Settings
    services: object
    api_key: str
    demo_ids: list[int]
    data_root: Path
