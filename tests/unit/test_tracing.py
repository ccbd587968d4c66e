"""Request ids in log records and the two log formats (operations/tracing.py)."""

from __future__ import annotations

import io
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from operations import tracing

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def captured():
    """A logger writing through a handler of our own (not the root's), into a buffer."""
    tracing.install()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger = logging.getLogger("tests.tracing")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler, out
    logger.removeHandler(handler)
    logger.propagate = True


def test_json_lines_parse_and_carry_the_ids(captured):
    logger, handler, out = captured
    handler.setFormatter(tracing.JsonFormatter())
    logger.info("outside")
    with tracing.bound(request_id="req-1"):
        logger.warning("搜索 %s took %d ms", "红色", 12)
        with tracing.bound(job_id="job-9"):
            try:
                raise ValueError("bad\nline")
            except ValueError:
                logger.exception("job step failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # the traceback's line breaks stay inside its JSON string
    first, second, third = (json.loads(line) for line in lines)
    assert first["request_id"] == "-" and "job_id" not in first
    assert set(second) == {"time", "level", "logger", "message", "request_id"}
    assert second["message"] == "搜索 红色 took 12 ms"
    assert (second["level"], second["logger"], second["request_id"]) == ("WARNING", "tests.tracing", "req-1")
    assert second["time"].endswith("+00:00") and "T" in second["time"]
    assert (third["request_id"], third["job_id"]) == ("req-1", "job-9")
    assert "ValueError: bad\nline" in third["exception"]


def test_text_lines_show_the_ids(captured):
    logger, handler, out = captured
    handler.setFormatter(tracing.TextFormatter())
    with tracing.bound(request_id="req-2", job_id="j1"):
        logger.info("hello")
    logger.info("bye")
    hello, bye = out.getvalue().splitlines()
    assert hello.endswith(" INFO tests.tracing [req-2 job=j1] hello")
    assert bye.endswith(" INFO tests.tracing [-] bye")
    # A record made without the factory still formats.
    handler.handle(logging.makeLogRecord({"name": "x", "msg": "raw", "levelname": "INFO"}))
    assert out.getvalue().splitlines()[-1].endswith("[-] raw")


def test_ids_reach_pool_threads_only_when_carried(captured):
    logger, handler, out = captured
    handler.setFormatter(logging.Formatter("%(request_id)s %(job_id)s %(message)s"))
    with tracing.bound(request_id="req-3"), ThreadPoolExecutor(1) as pool:
        pool.submit(logger.info, "plain").result()  # a ThreadPoolExecutor does not copy the context
        pool.submit(tracing.carry(logger.info), "carried").result()
        pool.submit(tracing.carry(logger.info, job_id="job-4"), "in a job").result()
        t = threading.Thread(target=tracing.carry(logger.info), args=("thread",))
        t.start()
        t.join()
    assert out.getvalue().splitlines() == [
        "- None plain",
        "req-3 None carried",
        "req-3 job-4 in a job",
        "req-3 None thread",
    ]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc", True),
        ("A1-b2_c3.d4:e5", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        (None, False),
        ("a b", False),
        ("a\nb", False),
        ('a"b', False),
        ("日志", False),
    ],
)
def test_accept_request_id(sent, kept):
    got = tracing.accept_request_id(sent)
    assert (got == sent) is kept
    if not kept:
        assert len(got) == 32 and int(got, 16) >= 0


@pytest.fixture
def root_logging():
    """The root logger's handlers and level, put back after a test that reconfigures them."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def test_configure_logging_json_writes_one_object_a_line(capfd, root_logging):
    tracing.configure_logging("json", "DEBUG")
    with tracing.bound(request_id="cfg-1"):
        logging.getLogger("tests.cfg").debug("debug line")
    logging.getLogger("tests.cfg").info("second")
    err = capfd.readouterr().err.splitlines()
    parsed = [json.loads(line) for line in err]
    assert [(p["message"], p["request_id"]) for p in parsed] == [("debug line", "cfg-1"), ("second", "-")]


@pytest.mark.parametrize(
    ("level_env", "logged"), [(None, ["warning line"]), ("INFO", ["info line", "warning line"])]
)
def test_the_command_line_logs_in_log_format(tmp_path, monkeypatch, capfd, root_logging, level_env, logged):
    """`imgsearch cli` writes its log lines as the service does (LOG_FORMAT), at WARNING unless
    LOG_LEVEL is set: INFO lines would break up its progress bars."""
    from scripts import cli

    monkeypatch.chdir(tmp_path)  # no .env of the repository is read
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("MODEL_NAME", "demo-tiny")
    monkeypatch.setenv("MODEL_CHECKPOINT", str(REPO / "models" / "demo" / "demo-tiny.pt"))
    monkeypatch.setenv("MODEL_ARCH", str(REPO / "config" / "model_configs" / "demo-tiny.json"))
    monkeypatch.setenv("MILVUS_URI", str(tmp_path / "milvus.db"))
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "images.sqlite3"))
    if level_env:
        monkeypatch.setenv("LOG_LEVEL", level_env)
    assert cli.main(["list"]) == 0
    capfd.readouterr()
    logging.getLogger("tests.cli").info("info line")
    logging.getLogger("tests.cli").warning("warning line")
    err = capfd.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in err] == logged
