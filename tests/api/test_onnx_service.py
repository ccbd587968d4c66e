"""The service with ENCODER_BACKEND=onnx: adds and searches through the API give torch's answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from datasets import demo_generator as g
from operations.encoding.onnx_encoder import OnnxClipEncoder
from tests.fixtures_onnx import DEMO_ARCH, DEMO_CHECKPOINT
from tests.fixtures_stack import BACKENDS, backend_settings


@pytest.mark.parametrize("kind", BACKENDS)
def test_service_searches_with_encoder_backend_onnx(request, tmp_path, kind, demo_pair):
    from app.main import create_app
    from operations.factory import build_services
    from tests.stack import unique

    torch_enc, _ = demo_pair
    collection = unique("onnx")
    settings = backend_settings(
        request,
        tmp_path,
        kind,
        model_name="demo-tiny",
        model_checkpoint=DEMO_CHECKPOINT,
        model_arch=str(DEMO_ARCH),
        model_random_init=False,
        device="cpu",
        encoder_backend="onnx",
        inline_add_limit=64,
        default_collection=collection,
    )
    svc = build_services(settings)
    assert isinstance(svc.encoder, OnnxClipEncoder)
    data = g.generate_split("valid", 40)
    photos = [Image.open(io.BytesIO(b)) for b in data.jpegs]
    with TestClient(create_app(settings, svc)) as c:
        assert c.get("/readyz").json()["checks"]["model"] == "demo-tiny (128-d, onnx)"
        assert c.post("/img/collections", json={"name": collection}).status_code == 201
        files = [("files", (f"{i}.jpg", jpg, "image/jpeg")) for i, jpg in enumerate(data.jpegs)]
        added = c.post(f"/img/images/{collection}", files=files)
        assert added.status_code == 200, added.text
        ids = [r["id"] for r in added.json()["results"]]
        assert len(set(ids)) == 40
        # what torch says the answers are
        stored = torch_enc.encode_images(photos)
        for query in ("左边有一个红色的圆形", "蓝色的三角形"):
            found = c.post("/img/search", json={"query": query, "top_k": 10, "collection": collection})
            assert found.status_code == 200, found.text
            got = {r["id"]: r["score"] for r in found.json()["results"]}
            expected = stored @ torch_enc.encode_texts([query])[0]
            top = np.argsort(-expected)[:10]
            assert set(got) == {ids[i] for i in top}
            for i in top:
                assert abs(got[ids[i]] - expected[i]) < 1e-3
        # image search by upload: the same image first, scores as torch's
        found = c.post(
            "/img/search/image",
            files={"file": ("q.jpg", data.jpegs[7], "image/jpeg")},
            data={"top_k": "5", "collection": collection},
        ).json()["results"]
        expected = stored @ stored[7]
        assert found[0]["id"] == ids[7] and found[0]["score"] > 0.999
        assert [r["id"] for r in found] == [ids[i] for i in np.argsort(-expected)[:5]]
    svc.vectors.close()
    svc.images.close()
