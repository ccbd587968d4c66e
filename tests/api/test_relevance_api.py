"""Relevance through HTTP with the demo model, on Milvus Lite + SQLite and on the Milvus 2.3
server + MariaDB: relevance beside score, min_relevance, cut, order, the query language, text
plus image, feedback, 422s, the calibrate job.

The module's collection is a whole demo split (300 images) loaded through the model by a job,
so the module carries the `services` marker; the fast loop calibrates and searches with
relevance through the command line (tests/unit/test_relevance_cli.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from datasets import demo_generator as g
from operations.factory import build_services
from tests.fixtures_stack import BACKENDS, backend_settings
from tests.stack import wait_job

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 300


@pytest.fixture(scope="module", params=BACKENDS)
def demo(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rel")
    # A copy of the shipped calibration: the calibrate job below writes here, never into models/.
    (tmp / "cal").mkdir()
    shipped = REPO / "models" / "demo" / "demo-tiny.calibration.json"
    (tmp / "cal" / "demo-tiny.calibration.json").write_bytes(shipped.read_bytes())
    settings = backend_settings(
        request,
        tmp,
        request.param,
        model_name="demo-tiny",
        model_checkpoint=REPO / "models" / "demo" / "demo-tiny.pt",
        model_arch=str(REPO / "config" / "model_configs" / "demo-tiny.json"),
        model_random_init=False,
        default_collection="demo",
        device="cpu",
        calibration_dir=tmp / "cal",
    )
    data = g.generate_split("test", N_IMAGES, g.DEFAULT_SEED)
    g.write_split(data, settings.data_root / "demo")
    svc = build_services(settings)
    svc.jobs.ensure_tables()
    with TestClient(create_app(settings, svc)) as c:
        r = c.post("/img/load", json={"dataset": "demo", "split": "test", "collection": "demo"})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["state"] == "succeeded"
        c.cal_file = tmp / "cal" / "demo-tiny.calibration.json"
        c.scenes = {
            iid: {(o.shape, o.colour) for o in s.objects}
            for iid, s in zip(data.image_ids, data.scenes, strict=True)
        }
        yield c


def search(client, **body):
    r = client.post("/img/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_results_carry_calibrated_relevance_beside_score(demo):
    out = search(demo, query="左边有一个红色的圆形", top_k=20)
    assert out["calibrated"] is True and out["cut"]["candidates"] == 20
    rels = [x["relevance"] for x in out["results"]]
    scores = [x["score"] for x in out["results"]]
    assert all(0 <= r <= 1 for r in rels)
    assert rels == sorted(rels, reverse=True) and scores == sorted(scores, reverse=True)
    assert {x["tier"] for x in out["results"]} <= {"relevant", "maybe", "other"}


def test_min_relevance_and_auto_cut_shorten_the_list(demo):
    full = search(demo, query="一个红色的圆形", top_k=30)
    threshold = full["results"][4]["relevance"]
    cut = search(demo, query="一个红色的圆形", top_k=30, min_relevance=threshold)
    assert 5 <= len(cut["results"]) < 30
    assert all(x["relevance"] >= threshold for x in cut["results"])
    auto = search(demo, query="一个红色的圆形", top_k=30, cut="auto")
    assert auto["cut"]["auto_cut_at"] == len(auto["results"]) < 30
    assert [x["id"] for x in auto["results"]] == [x["id"] for x in full["results"][: len(auto["results"])]]


def test_order_by_created_at_newest_and_oldest_first(demo):
    newest = search(demo, query="蓝色", top_k=15, order_by="created_at", order="desc")["results"]
    dates = [x["created_at"] for x in newest]
    assert dates == sorted(dates, reverse=True)
    oldest = search(demo, query="蓝色", top_k=15, order_by="created_at", order="asc")["results"]
    assert {x["id"] for x in oldest} == {x["id"] for x in newest}
    assert [x["rank"] for x in oldest] == list(range(1, 16))


def test_an_unwanted_colour_is_removed(demo):
    plain = search(demo, query="圆形", top_k=20)["results"]
    neg = search(demo, query="圆形 -红色", top_k=20)["results"]
    red = lambda xs: sum(any(c == "red" for _, c in demo.scenes[x["id"]]) for x in xs)  # noqa: E731
    assert red(plain) > 0 and red(neg) <= red(plain) / 3
    assert neg and all(x["relevance"] is not None for x in neg)


def test_weights_text_with_stored_image_and_feedback(demo):
    weighted = search(demo, query="红色:3 圆形", top_k=10)["results"]
    assert len(weighted) == 10
    first = weighted[0]["id"]
    with_image = search(demo, query="红色", image_id=first, top_k=10)["results"]
    assert first not in {x["id"] for x in with_image}  # the query image is not its own result
    fb = search(demo, query="红色", positive_ids=[first], negative_ids=[weighted[1]["id"]], top_k=10)
    ids = {x["id"] for x in fb["results"]}
    assert first not in ids and weighted[1]["id"] not in ids and len(ids) == 10
    # an image with an unwanted colour: no wanted text, the term is subtracted
    red = lambda xs: sum(any(c == "red" for _, c in demo.scenes[x["id"]]) for x in xs)  # noqa: E731
    red_image = next(i for i, objs in demo.scenes.items() if any(c == "red" for _, c in objs))
    like = search(demo, image_id=red_image, top_k=10)["results"]
    unlike = search(demo, query="-红色", image_id=red_image, top_k=10)
    assert red(unlike["results"]) < red(like) and unlike["calibrated"] is False
    only_fb = search(demo, positive_ids=[first], top_k=5)
    assert only_fb["calibrated"] is False and "text" in only_fb["relevance_note"]
    assert all(x["relevance"] is None for x in only_fb["results"])


def test_upload_with_a_query(demo):
    photo = g.render_scene(g.simple_scene("circle", "red", "center", bg_colour="beige"), rng=1)
    buf = io.BytesIO()
    photo.save(buf, format="JPEG")
    r = demo.post(
        "/img/search/image",
        files={"file": ("q.jpg", buf.getvalue(), "image/jpeg")},
        data={"query": "蓝色", "top_k": "5", "cut": "auto"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["calibrated"] is True and 1 <= len(r.json()["results"]) <= 5
    r = demo.post(
        "/img/search/image", files={"file": ("q.jpg", buf.getvalue(), "image/jpeg")}, data={"top_k": "5"}
    )
    assert r.status_code == 200 and r.json()["calibrated"] is False  # image only: no relevance, said why
    Image.open(buf)  # the upload is untouched


@pytest.mark.parametrize(
    "body",
    [
        {"query": "-红色"},
        {"query": "红色:0"},
        {"query": "红色 -"},
        {"query": "红色 -红色"},
        {"query": ""},
        {"query": "红色", "min_relevance": 1.5},
        {"query": "红色", "cut": "sometimes"},
        {"query": "红色", "order_by": "size"},
        {"query": "红色", "positive_ids": [1], "negative_ids": [1]},
        {"query": "红色", "positive_ids": ["x"]},
    ],
)
def test_malformed_queries_are_422(demo, body):
    r = demo.post("/img/search", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]


def test_unknown_feedback_id_is_404(demo):
    r = demo.post("/img/search", json={"query": "红色", "positive_ids": [999_999_999]})
    assert r.status_code == 404, r.text


def test_calibrate_job_writes_the_models_calibration(demo):
    before = json.loads(demo.cal_file.read_text())
    r = demo.post("/img/calibrate", json={"dataset": "demo", "split": "test", "collection": "demo"})
    assert r.status_code == 202, r.text
    job = wait_job(demo, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert "calibrated demo-tiny" in job["message"] and "collection" in json.dumps(job["params"])
    after = json.loads(demo.cal_file.read_text())
    assert after["fitted_on"]["split"] == "test" and before["fitted_on"]["split"] == "valid"
    assert after["fitted_on"]["image_features_from"] == "collection"
    assert after["checkpoint_sha256"] == before["checkpoint_sha256"]
    # searches use the new fit at once (the file is re-read when it changes)
    demo.cal_file.write_text(json.dumps(before))
    r = demo.post("/img/calibrate", json={"dataset": "nope", "split": "test"})
    assert r.status_code == 400
