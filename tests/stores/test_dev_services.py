"""The real-service fixtures themselves: up, usable, and able to go away and come back."""

from __future__ import annotations

import time

import grpc
import pymysql
import pytest
from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from scripts import dev_services as services

MILVUS_ERRORS = (MilvusException, grpc.RpcError)


def test_mariadb_select_1(mariadb: services.MariaDBServer) -> None:
    assert mariadb.url.startswith(f"mysql://{mariadb.user}:{mariadb.password}@127.0.0.1:{mariadb.port}/")
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1, @@character_set_server, @@max_allowed_packet")
        assert cur.fetchone() == (1, "utf8mb4", 64 * 1024 * 1024)


def test_mariadb_restart_and_kill_keep_data(mariadb: services.MariaDBServer) -> None:
    db = mariadb.create_database().rsplit("/", 1)[1]
    with mariadb.connect(db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(20)) ENGINE=InnoDB")
        cur.execute("INSERT INTO t VALUES (1, %s)", ("中文",))
    port = mariadb.port
    mariadb.restart()
    assert mariadb.port == port
    with mariadb.connect(db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (2, 'b')")
    mariadb.kill()  # crash: committed rows must survive
    mariadb.start()
    with mariadb.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, s FROM t ORDER BY id")
        assert cur.fetchall() == ((1, "中文"), (2, "b"))
    mariadb.drop_database(db)


def test_mariadb_down_fails_fast_and_comes_back(mariadb: services.MariaDBServer) -> None:
    conn = mariadb.connect()
    with mariadb.down():
        assert not mariadb.running
        start = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError):
            mariadb.connect(connect_timeout=2)
        with pytest.raises(pymysql.err.OperationalError):  # "server has gone away" / lost connection
            conn.ping(reconnect=False)
        assert time.monotonic() - start < 5
    conn.close()
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_milvus_server_lists_collections(milvus_server: services.MilvusTestServer) -> None:
    assert milvus_server.uri == f"http://127.0.0.1:{milvus_server.port}"
    client = MilvusClient(uri=milvus_server.uri, timeout=10)
    client.create_collection("svc_smoke", dimension=8, consistency_level="Strong")
    try:
        assert "svc_smoke" in client.list_collections(timeout=5)
        assert client.get_server_version(timeout=5).startswith("v2.3")
    finally:
        client.drop_collection("svc_smoke", timeout=10)


def test_milvus_paused_fails_within_timeout(milvus_server: services.MilvusTestServer) -> None:
    client = MilvusClient(uri=milvus_server.uri, timeout=10)
    with milvus_server.paused():
        start = time.monotonic()
        with pytest.raises(MILVUS_ERRORS):
            client.list_collections(timeout=2)
        assert time.monotonic() - start < 5
    assert isinstance(client.list_collections(timeout=5), list)


@pytest.mark.slow
def test_milvus_stopped_fails_within_timeout_and_client_recovers(
    milvus_server: services.MilvusTestServer,
) -> None:
    client = MilvusClient(uri=milvus_server.uri, timeout=10)
    client.create_collection("svc_restart", dimension=8, consistency_level="Strong")
    client.insert("svc_restart", [{"id": 1, "vector": [0.5] * 8}], timeout=10)
    try:
        with milvus_server.down():
            start = time.monotonic()
            with pytest.raises(MILVUS_ERRORS):
                client.list_collections(timeout=2)
            assert time.monotonic() - start < 5
        # down() waited until collections answer again; the same client recovers by itself.
        rows = client.query("svc_restart", filter="", output_fields=["count(*)"], timeout=10)
        assert rows[0]["count(*)"] == 1
    finally:
        client.drop_collection("svc_restart", timeout=10)


def test_milvus_lite_uri_is_a_fresh_file(milvus_lite_uri: str) -> None:
    client = MilvusClient(milvus_lite_uri)
    assert client.list_collections() == []
    client.close()


def test_sqlite_path_is_fresh(sqlite_path) -> None:
    assert not sqlite_path.exists()
    assert sqlite_path.parent.is_dir()


class _AbortsOnFirstStart(services.MariaDBServer):
    """mariadbd behind a shell that SIGABRTs itself on the first start only."""

    def _server_cmd(self) -> list[str]:
        marker = self.base / "aborted-once"
        script = f'if [ ! -e "{marker}" ]; then touch "{marker}"; kill -ABRT $$; fi; exec "$@"'
        return ["sh", "-c", script, "sh", *super()._server_cmd()]


class _AlwaysAborts(services.MariaDBServer):
    def _server_cmd(self) -> list[str]:
        return ["sh", "-c", 'echo "before the error log"; kill -ABRT $$']


def test_mariadb_killed_by_a_signal_while_starting_is_started_again(caplog) -> None:
    server = _AbortsOnFirstStart()
    try:
        server.start()
        assert (server.base / "aborted-once").exists()
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert "exited with -6 during start; " in caplog.text
    finally:
        server.close()


def test_mariadb_that_keeps_dying_says_what_it_printed() -> None:
    server = _AlwaysAborts()
    try:
        with pytest.raises(services.ServiceError, match="exited with -6") as err:
            server.start()
        assert "before the error log" in str(err.value)  # mariadbd.out is in the message
        assert not server.running
    finally:
        server.close()
