"""Request ids in the logs: which request (and which job) every log line belongs to.

The HTTP layer binds each request's id (`bound`) for the request's task; every
log record made while it is bound carries it as `request_id` (the record
factory installed by `install`), whatever the logger. A context variable
follows the request into anyio's worker threads (they run in a copy of the
caller's context), the Milvus store's call threads and an add's prepare
thread (both run in a copy of it, store budgets included), but not into a
plain thread or a `ThreadPoolExecutor`: the job runner, the load's pipeline
stages and the OCR pool hand their work over through `carry`, which takes the
ids along and nothing else (the store deadlines of operations/deadline.py
are not shared with those). A background job's lines carry the id of the
request that started it and the job's id.

`LOG_FORMAT=text` writes `time level logger [request_id job=...] message`;
`LOG_FORMAT=json` one JSON object per line (`JsonFormatter`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("job_id", default=None)

# A client's X-Request-ID is kept when it is an id and nothing else: at most 128 of
# these characters (UUIDs, W3C trace ids, most proxies' ids). Anything else (spaces,
# quotes, newlines that would forge log lines, a huge header) is replaced by a new id.
MAX_REQUEST_ID = 128
_SANE_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID}}}")
NO_ID = "-"


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: str | None) -> str:
    """The client's id when it is sane (see `_SANE_ID`), else a new one."""
    if value is not None and _SANE_ID.fullmatch(value):
        return value
    return new_request_id()


def current_request_id() -> str | None:
    return _request_id.get()


def current_job_id() -> str | None:
    return _job_id.get()


@contextlib.contextmanager
def bound(request_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Log lines made inside carry these ids (None leaves the current one)."""
    tokens = []
    if request_id is not None:
        tokens.append((_request_id, _request_id.set(request_id)))
    if job_id is not None:
        tokens.append((_job_id, _job_id.set(job_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def carry(fn: Callable[P, T], *, job_id: str | None = None) -> Callable[P, T]:
    """`fn`, to be run in another thread under the ids bound here now (and `job_id`)."""
    request_id, job = _request_id.get(), job_id or _job_id.get()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with bound(request_id, job):
            return fn(*args, **kwargs)

    return run


# --- log records and formats ----------------------------------------------------
_base_factory: Callable[..., logging.LogRecord] | None = None


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _base_factory is not None
    record = _base_factory(*args, **kwargs)
    request_id, job_id = _request_id.get(), _job_id.get()
    record.request_id = request_id or NO_ID
    record.job_id = job_id
    record.trace = (request_id or NO_ID) + (f" job={job_id}" if job_id else "")
    return record


def install() -> None:
    """Give every log record `request_id`, `job_id` and `trace` (idempotent)."""
    global _base_factory
    if _base_factory is None:
        _base_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_record_factory)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(trace)s] %(message)s"


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT; a record made without the factory (logging.makeLogRecord) shows no id."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "trace"):
            record.trace = NO_ID
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id,
    job_id when in a job, exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", NO_ID),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            out["job_id"] = job_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """The process's logging: one handler on the root logger, in `fmt` (text or json)."""
    install()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
