"""Milvus calls of one request share its MILVUS_TIMEOUT_S (operations/deadline.py): an add
whose vector write waited for a slow server does not wait one more timeout for the
visibility probe of its flush. Real server only (SIGSTOP freezes it)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from operations import deadline
from operations.domain import IndexSpec
from operations.errors import DependencyUnavailable
from operations.stores.milvus_store import MilvusVectorStore
from tests.stack import unique

T_S = 2.0
SLOW_S = 1.5  # how long the server stays frozen during the write
MARGIN_S = 0.8


def test_an_adds_flush_shares_the_budget_its_slow_write_used(milvus_server):
    store = MilvusVectorStore(milvus_server.uri, timeout_s=T_S)
    name = unique("budget")
    try:
        store.create_collection(name, 8, "tiny", IndexSpec("FLAT", {}, {}))
        vectors = np.eye(8, dtype=np.float32)[:2]
        with deadline.request_scope():
            # The write answers, but only after SLOW_S of the request's T_S.
            milvus_server.pause()
            threading.Timer(SLOW_S, milvus_server.resume).start()
            started = time.monotonic()
            store.upsert(name, [1, 2], vectors, visible=False)
            assert time.monotonic() - started >= SLOW_S - 0.1
            # Frozen again before the add's flush: the flush may only spend what is left.
            with milvus_server.paused():
                flush_started = time.monotonic()
                with pytest.raises(DependencyUnavailable):
                    store.flush(name)
                flush_took = time.monotonic() - flush_started
            total = time.monotonic() - started
        assert flush_took < T_S - SLOW_S + MARGIN_S, f"the flush waited {flush_took:.2f} s"
        assert total < T_S + MARGIN_S, f"the request waited {total:.2f} s for Milvus"
    finally:
        milvus_server.resume()
        store.drop_collection(name)
        store.close()
