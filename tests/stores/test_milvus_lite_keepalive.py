"""A Milvus Lite connection left idle is not closed by its server for "too many pings".

Lite serves gRPC from a thread of this process with gRPC's default server policy, and
pymilvus' own keepalive (a ping every 10 s, also with no call in flight) earns a GOAWAY
"too_many_pings" after about a minute of idling: an error line from gRPC on stderr (seen in the
demo's log) and a reconnect on the next call. The store's Lite connection sends no such pings
(operations.stores.milvus_store.LITE_GRPC_OPTIONS). A client with pymilvus' defaults idles
beside it in the same test, so the test shows the server does punish idle pings here."""

from __future__ import annotations

import time

import pytest
from milvus_lite.server_manager import server_manager_instance
from pymilvus import MilvusClient

from operations.domain import IndexSpec
from operations.stores.milvus_store import MilvusVectorStore
from tests.stack import unit_rows

# A minute and a half: pymilvus' pings (every 10 s) earn the GOAWAY after about 60 s here.
IDLE_S = 90.0

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _port(db_path: str) -> str:
    # The Lite server already started for this file: its URI, as pymilvus connected to it.
    return server_manager_instance.start_and_get_uri(db_path).rsplit(":", 1)[1]


def test_an_idle_lite_connection_is_not_closed_for_too_many_pings(tmp_path, capfd):
    ours_path, control_path = str(tmp_path / "ours.db"), str(tmp_path / "control.db")
    store = MilvusVectorStore(ours_path, timeout_s=10)
    control = MilvusClient(uri=control_path)
    try:
        store.create_collection("c", 8, "m", IndexSpec())
        vec = unit_rows(1, 8, seed=0)
        store.upsert("c", [1], vec)
        control.create_collection("c", dimension=8)
        control.insert("c", [{"id": 1, "vector": vec[0].tolist()}])
        assert [h.id for h in store.search("c", vec, 1)[0]] == [1]
        ours, theirs = _port(ours_path), _port(control_path)
        capfd.readouterr()

        time.sleep(IDLE_S)

        # Both connections still answer (the control's reconnects after its GOAWAY).
        assert [h.id for h in store.search("c", vec, 1)[0]] == [1]
        assert control.search("c", data=[vec[0].tolist()], limit=1)[0][0]["id"] == 1
        goaways = [line for line in capfd.readouterr().err.splitlines() if "too_many_pings" in line]
        assert any(f"127.0.0.1:{theirs}" in line for line in goaways), (
            f"the control client with pymilvus' keepalive was not told too_many_pings: {goaways}"
        )
        assert not [line for line in goaways if f"127.0.0.1:{ours}" in line]
    finally:
        control.close()
        store.close()
