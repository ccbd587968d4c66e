"""Several collections can serve different models side by side (EXTRA_MODELS)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from tests.stack import TINY_ARCH, jpeg, make_services, make_settings


def test_a_collection_is_searched_with_the_model_it_was_built_with(tmp_path):
    settings = make_settings(tmp_path, extra_models={"tiny-b": {"arch": str(TINY_ARCH), "random_init": True}})
    svc = make_services(settings)
    with TestClient(create_app(settings, svc)) as c:
        assert c.get("/img/models").json()["available"] == ["tiny", "tiny-b"]
        assert c.post("/img/collections", json={"name": "main_lib"}).status_code == 201
        r = c.post("/img/collections", json={"name": "other_lib", "model": "tiny-b"})
        assert r.status_code == 201 and r.json()["model"] == "tiny-b"
        assert c.post("/img/collections", json={"name": "x", "model": "unknown"}).status_code == 409
        for name in ("main_lib", "other_lib"):
            added = c.post(f"/img/images/{name}", files={"files": ("a.jpg", jpeg(1), "image/jpeg")}).json()
            assert added["results"][0]["status"] == "added"
            found = c.post("/img/search", json={"query": "红色", "collection": name}).json()
            assert found["model"] == ("tiny" if name == "main_lib" else "tiny-b")
            assert len(found["results"]) == 1
        listed = {x["name"]: x["model"] for x in c.get("/img/collections").json()}
        assert listed == {"main_lib": "tiny", "other_lib": "tiny-b"}
