"""Regressions the schemathesis runs (tests/test_fuzz.py) found, kept as plain tests."""

from __future__ import annotations

import threading

from operations.errors import ServiceError
from tests.stack import unique


def test_the_same_collection_created_at_once_by_several_threads(services):
    """Stateful fuzzing: a load job and POST /img/collections created "demo" at the same
    moment; the second creation failed inside Milvus Lite ("File exists") and answered 503."""

    def create(name: str, start: threading.Barrier, errors: list) -> None:
        start.wait()
        try:
            services.ensure_collection(name)
        except ServiceError as exc:
            errors.append(exc)

    for _ in range(3):
        name, start, errors = unique("race"), threading.Barrier(6), []
        threads = [threading.Thread(target=create, args=(name, start, errors)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, [getattr(e, "message", e) for e in errors]
        assert services.vectors.has_collection(name)
