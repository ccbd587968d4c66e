"""The settings compose.yaml and deploy/k8s give the service, run against the real servers.

No container runs here, so the service is started as the image would start it (the Dockerfile's
CMD, from the repository folder as the image's WORKDIR, with the Dockerfile's ENV) with exactly
the environment compose.yaml or the Kubernetes ConfigMap + Secret give it. Only these change:
- the Milvus and MySQL hosts and ports become the suite's Milvus 2.3 server and MariaDB (user,
  password and database stay the file's: the MariaDB gets that user, with rights on that
  database only, as MySQL's image makes MYSQL_USER);
- container paths become folders of this test, following the file's own mounts (./models is the
  repository's models/, as compose mounts it);
- the model is the demo model (models/demo, through the variables compose.yaml documents for
  it), since RN50's weights are not here; the collection has a fresh name.
Then a client does what a user would: readiness (the file's own health check), create a
collection, add images, search by image and by text, count, and the rows are where the file's
MYSQL_URL says.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pymysql
import pytest

from scripts.dev_services import free_port
from tests.deploy_config import (
    COMPOSE,
    REPO,
    SETTING_NAMES,
    healthcheck_command,
    k8s_container,
    k8s_documents,
    k8s_environment,
    k8s_mounts,
    load_yaml,
    map_path,
    parse_dockerfile,
    service_environment,
    service_mounts,
)
from tests.stack import jpeg, unique

DEMO_MODEL = {
    "MODEL_NAME": "demo-tiny",
    "MODEL_CHECKPOINT": "models/demo/demo-tiny.pt",
    "MODEL_ARCH": "config/model_configs/demo-tiny.json",
}
START_TIMEOUT_S = 240


def _compose_stack(tmp: Path, collection: str) -> tuple[dict[str, str], dict[str, Path], list[str]]:
    app = load_yaml(COMPOSE)["services"]["app"]
    variables = {
        "MYSQL_PASSWORD": "pw_" + secrets.token_hex(6),
        "MYSQL_ROOT_PASSWORD": "unused",
        "DEFAULT_COLLECTION": collection,
        **DEMO_MODEL,
    }
    env = service_environment(app, variables)
    mounts = {}
    for mount in service_mounts(app):
        mounts[mount.target] = REPO / mount.source if not mount.named else tmp / mount.source
    return env, mounts, healthcheck_command(app)


def _k8s_stack(tmp: Path, collection: str) -> tuple[dict[str, str], dict[str, Path], list[str]]:
    docs = k8s_documents()
    env = {**k8s_environment(docs), **DEMO_MODEL, "DEFAULT_COLLECTION": collection}
    mounts = {}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in docs[("Deployment", "imgsearch")]["spec"]["template"]["spec"]["volumes"]
    }
    for mount in k8s_mounts(docs):
        # the models claim holds what ./models holds; the others start empty
        mounts[mount.target] = (
            REPO / "models" if claims[mount.source] == "imgsearch-models" else tmp / mount.source
        )
    path = k8s_container(docs)["readinessProbe"]["httpGet"]["path"]
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000{path}', timeout=4)"
    return env, mounts, ["python", "-c", probe]


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_the_files_settings_serve_on_the_real_servers(source, milvus_server, mariadb, tmp_path):
    dockerfile = parse_dockerfile()
    collection = unique("deploy")
    env, mounts, health = (_compose_stack if source == "compose" else _k8s_stack)(tmp_path, collection)
    image_env = {k: v for k, v in dockerfile.env().items() if k in SETTING_NAMES}
    env = {**image_env, **env}
    for folder in mounts.values():
        folder.mkdir(parents=True, exist_ok=True)

    # Hosts: the file's Milvus and MySQL become the suite's servers.
    milvus = urlsplit(env["MILVUS_URI"])
    assert milvus.scheme == "http" and milvus.port == 19530, env["MILVUS_URI"]
    env["MILVUS_URI"] = milvus_server.uri
    mysql = urlsplit(env["MYSQL_URL"])
    assert mysql.scheme == "mysql" and mysql.port == 3306, env["MYSQL_URL"]
    user, password, database = mysql.username, mysql.password, mysql.path.lstrip("/")
    assert user and password and database
    env["MYSQL_URL"] = mariadb.create_user_database(user, password, database)
    mariadb.connect().close()  # the suite's own login is untouched by the file's user
    # Paths: container paths become this test's folders, by the file's mounts.
    for name, value in list(env.items()):
        if value.startswith("/"):
            mapped = map_path(value, {k: Path(v) for k, v in mounts.items()})
            assert mapped != value, f"{name}={value} is on none of the file's mounts"
            env[name] = mapped

    port = free_port()
    cmd = dockerfile.exec_form("CMD")
    cmd = [sys.executable if w == "python" else w for w in cmd]
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    child_env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    child_env.update(env)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        # The file's own health check, pointed at this port.
        check = [sys.executable if w == "python" else w.replace(":8000/", f":{port}/") for w in health]
        deadline = time.time() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"the server exited:\n{log.read_text()[-3000:]}"
            if subprocess.run(check, capture_output=True, timeout=30).returncode == 0:
                break
            assert time.time() < deadline, f"not ready in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        _use_the_service(base, env, collection, user, password, database, mariadb)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _use_the_service(base, env, collection, user, password, database, mariadb) -> None:
    headers = {"X-API-Key": env["API_KEY"]} if env.get("API_KEY") else {}
    with httpx.Client(base_url=base, timeout=60) as http:
        ready = http.get("/readyz").json()
        assert ready["status"] == "ready" and ready["checks"]["milvus"] == "ok" == ready["checks"]["sql"], (
            ready
        )
        created = http.post("/img/collections", json={"name": collection}, headers=headers)
        assert created.status_code in (200, 201), created.text
        view = http.get(f"/img/collections/{collection}").json()
        assert view["index_type"] == env.get("INDEX_TYPE", "FLAT") and view["model"] == "demo-tiny"
        try:
            files = [("files", (f"{i}.jpg", jpeg(1000 + i, size=96), "image/jpeg")) for i in range(3)]
            if headers:
                refused = http.post(f"/img/images/{collection}", files=files)
                assert refused.status_code == 401, "API_KEY is set: a write without it is refused"
            added = http.post(f"/img/images/{collection}", files=files, headers=headers)
            assert added.status_code == 200, added.text
            items = added.json()["results"]
            assert [r["status"] for r in items] == ["added"] * 3, items
            ids = [r["id"] for r in items]

            found = http.post(
                "/img/search/image",
                files={"file": ("q.jpg", jpeg(1001, size=96), "image/jpeg")},
                data={"collection": collection, "top_k": "3"},
            )
            assert found.status_code == 200, found.text
            top = found.json()["results"][0]
            assert top["id"] == ids[1] and top["score"] > 0.99, top
            text = http.post(
                "/img/search", json={"query": "红色的圆形", "collection": collection, "top_k": 3}
            )
            assert text.status_code == 200 and len(text.json()["results"]) == 3, text.text
            counts = http.get(f"/img/collections/{collection}/count").json()
            assert counts["images"] == counts["vectors"] == 3, counts
            # the rows are in the database the file names, written as the file's user
            with (
                pymysql.connect(
                    host=mariadb.host, port=mariadb.port, user=user, password=password, database=database
                ) as conn,
                conn.cursor() as cur,
            ):
                assert re.fullmatch(r"\w+", collection)
                cur.execute(f"SELECT COUNT(*) FROM `img_{collection}`")
                assert cur.fetchone()[0] == 3
        finally:
            dropped = http.delete(f"/img/collections/{collection}", headers=headers)
            assert dropped.status_code == 200, dropped.text
