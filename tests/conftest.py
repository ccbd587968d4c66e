"""Fixtures shared by the whole test suite.

Layout: tests/unit (no I/O beyond files, Milvus Lite and SQLite), tests/stores (the stores on
every backend), tests/api (the HTTP API and its faults), tests/e2e (processes started and
killed: the demo, resumed loads, training), tests/browser (Chromium). Shared helpers stay here:
stack.py (a service on a chosen backend), fixtures_stack.py, data/.

Real services (MariaDB, Milvus 2.3 server, from scripts.dev_services) start once per session,
on first use. They are skipped only when SKIP_REAL_SERVICES=1; otherwise a service that fails
to start is a test ERROR, so CI really runs them.

The `services` marker is what the fast loop leaves out (`pytest -m "not services"`): it is
added here to every test that uses a server fixture or the "server" backend, and to everything
under tests/e2e and tests/browser (processes, servers, Chromium, training); a test elsewhere
that starts a server, loads a big model, runs a whole split through a model or measures over
many requests says `@pytest.mark.services` itself (CONTRIBUTING.md, "Tests").

Add your own fixtures in tests/fixtures_<area>.py and list the module in `pytest_plugins`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import dev_services as services

# Loading (torch, pymilvus, the app, the test modules) makes hundreds of thousands of objects
# that live for the whole run; the garbage collector would walk them over and over while they
# load. It is off until collection has finished (pytest_collection_finish).
gc.disable()

# Tests run on shared machines (CI runners, a 2-core box several people test on). By default
# torch's OpenMP workers spin while they wait for work, taking the cores that the app's other
# threads, Milvus Lite and other processes need, and under contention every parallel region
# waits for a descheduled worker; sleeping workers change no result. It has to be set before
# torch is first imported (by the fixture modules below); an OMP_WAIT_POLICY of your own wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins: list[str] = [
    "tests.fixtures_stack",
    "tests.fixtures_onnx",
]

SKIP_ENV = "SKIP_REAL_SERVICES"
_REAL_SERVICE_FIXTURES = {"mariadb", "milvus_server"}
# Values of a backend parameter (fixtures_stack.py, the store fixtures) that use the real servers.
_SERVER_BACKENDS = {"server", "mariadb"}
_SERVICE_FOLDERS = ("e2e", "browser")


def _skip_if_disabled(what: str) -> None:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{what} not started: {SKIP_ENV}=1")


@pytest.fixture(scope="session")
def mariadb() -> Iterator[services.MariaDBServer]:
    """A private MariaDB: `.url` (mysql://user:pass@127.0.0.1:port/db), `.stop()`, `.start()`,
    `.restart()`, `.kill()`, `.pause()`, `with .down():`, `.connect()`, `.create_database()`."""
    _skip_if_disabled("MariaDB")
    server = services.MariaDBServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[services.MilvusTestServer]:
    """The Milvus 2.3.5 server: `.uri` (http://127.0.0.1:19541), `.stop()`, `.start()`,
    `.restart()`, `.kill()`, `.pause()`, `with .down():`, `.drop_all_collections()`."""
    _skip_if_disabled("Milvus server")
    server = services.MilvusTestServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _real_services_back_up() -> Iterator[None]:
    """A test that stopped or paused a session server (and failed before undoing it) must not
    break the tests after it."""
    yield
    for server in services.active_services():
        server.ensure_running()


@pytest.fixture
def milvus_lite_uri(tmp_path: Path) -> str:
    """A fresh Milvus Lite file for this test (a Lite file stays locked by this process)."""
    return str(tmp_path / "milvus.db")


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A path for a fresh SQLite database file (not created yet)."""
    return tmp_path / "images.sqlite3"


def _needs_services(item: pytest.Item) -> bool:
    return _uses_real_servers(item) or Path(str(item.fspath)).parent.name in _SERVICE_FOLDERS


# The whole tree, the full suite (`python3 -m pytest -q`, the README's command) as well as the fast
# loop (`-m "not services"`), runs on this many pytest-xdist workers when no -n is given: on two
# cores much of the suite waits (for servers to restart, processes to start, jobs to finish), and
# the fast loop's tests are independent (bench/README.md, "The test suite on two workers"). Every
# test that uses the real MariaDB or Milvus server goes to one worker, in collection order (the
# xdist group below): the servers are shared by the session and only one Milvus test server runs
# on a machine. A run of chosen files stays in one process; `-n 0` keeps any run in one.
SUITE_WORKERS = 2
SERVERS_GROUP = "real-servers"


def _runs_the_whole_tree(config: pytest.Config) -> bool:
    markexpr = (config.option.markexpr or "").replace(" ", "")
    whole_tree = [Path(a).resolve() for a in config.args] == [Path(config.rootpath, "tests").resolve()]
    return whole_tree and markexpr in ("", "notservices") and not config.option.keyword


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("xdist"):
        return
    if hasattr(config, "workerinput"):
        # A worker parses the command line again, not the options set below: it learns the
        # distribution from the controller (pytest_configure_node), and reads the xdist_group
        # marks only when it is loadgroup.
        if config.workerinput.get("dist") == "loadgroup":
            config.option.loadgroup = True
        return
    if (
        config.getoption("numprocesses", None) is None
        and not config.getoption("collectonly")
        and (os.cpu_count() or 1) >= SUITE_WORKERS
        and _runs_the_whole_tree(config)
    ):
        # Before xdist's own pytest_configure (trylast), which starts the workers from these.
        config.option.numprocesses = SUITE_WORKERS
        config.option.tx = ["popen"] * SUITE_WORKERS
        config.option.dist = "loadgroup"
    elif config.getoption("dist", "no") == "load":
        # `-n N` alone: the same as load but for the servers' group, which cannot be spread
        # (one Milvus test server a machine).
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist, on the controller: tell each worker the distribution (see pytest_configure)."""
    node.workerinput["dist"] = node.config.getoption("dist")


def _uses_real_servers(item: pytest.Item) -> bool:
    if _REAL_SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and bool(
        _SERVER_BACKENDS.intersection(v for v in callspec.params.values() if isinstance(v, str))
    )


# First: xdist's worker reads the xdist_group marks in its own hook of this name, which would
# otherwise run before this one and see none.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _needs_services(item):
            item.add_marker(pytest.mark.services)
        if _uses_real_servers(item):
            item.add_marker(pytest.mark.xdist_group(SERVERS_GROUP))


def pytest_collection_finish(session: pytest.Session) -> None:
    """What is loaded by now lives for the whole run: frozen, it is left out of every later
    garbage collection, which then walks the tests' own objects only. Full collections are
    frequent (every ONNX model load runs one: OnnxClipEncoder.release_torch)."""
    gc.collect()
    gc.freeze()
    gc.enable()


# Files the repository ships that a test run must never rewrite (a calibrate job once wrote a
# refit into models/demo/ through a test server and broke the shipped calibration).
_SHIPPED_DIRS = ("models/demo", "config")


def _shipped_digests() -> dict[str, str]:
    import hashlib

    root = Path(__file__).resolve().parent.parent
    digests = {}
    for folder in _SHIPPED_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="session", autouse=True)
def _shipped_files_unchanged() -> Iterator[None]:
    before = _shipped_digests()
    yield
    after = _shipped_digests()
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"the test run changed shipped files: {changed}"
