"""The committed demo model: loads through the service's encoder and really retrieves.

The valid split is regenerated into a temporary directory (deterministic, a few
seconds), so the numbers never depend on a stale local copy of the data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import demo_generator as g
from operations.encoding.clip_encoder import ClipEncoder, ModelSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = REPO_ROOT / "models" / "demo" / "demo-tiny.pt"
ARCH = REPO_ROOT / "config" / "model_configs" / "demo-tiny.json"


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return ClipEncoder.load(ModelSpec(name="demo-tiny", checkpoint=CHECKPOINT, arch=str(ARCH), device="cpu"))


@pytest.fixture(scope="module")
def valid(encoder):
    """(image_ids, image features, texts, scenes) of the default valid split."""
    data = g.generate_split("valid", g.DEFAULT_SIZES["valid"], g.DEFAULT_SEED)
    images = [Image.open(io.BytesIO(b)) for b in data.jpegs]
    feats = encoder.encode_images(images)
    scenes = dict(zip(data.image_ids, data.scenes))
    return data.image_ids, feats, data.texts, scenes


def test_checkpoint_is_small_and_pure_data():
    assert CHECKPOINT.stat().st_size < 20 * 1024 * 1024
    ckpt = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "demo-tiny"
    assert isinstance(ckpt["epoch"], int) and isinstance(ckpt["seed"], int)
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())


def test_encoder_outputs_normalised_float32(encoder):
    txt = encoder.encode_texts(["左边有一个红色的圆形", "蓝色的星星"])
    img = encoder.encode_images([g.render_scene(g.simple_scene("circle", "red", "left"), 1)])
    for feats in (txt, img):
        assert feats.dtype == np.float32 and feats.shape[1] == encoder.dim
        assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)


def _recall_at(sims: np.ndarray, image_ids: list[int], texts: list[dict], k: int) -> float:
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    ids = np.asarray(image_ids)[top]
    return float(np.mean([bool(set(ids[j].tolist()) & set(t["image_ids"])) for j, t in enumerate(texts)]))


def test_valid_text_to_image_recall(encoder, valid):
    image_ids, img, texts, _ = valid
    assert len(image_ids) == 1000 and len(texts) > 2000
    txt = encoder.encode_texts([t["text"] for t in texts])
    sims = txt @ img.T
    r1, r5, r10 = (_recall_at(sims, image_ids, texts, k) for k in (1, 5, 10))
    assert r10 >= 0.9, (r1, r5, r10)
    assert r1 <= r5 <= r10
    # against the same texts shuffled onto other ground truth, recall collapses
    rng = np.random.default_rng(0)
    shuffled = [texts[i] for i in rng.permutation(len(texts))]
    assert _recall_at(sims, image_ids, shuffled, 10) < 0.1


QUERIES = [
    ("circle", "red", "left"),
    ("star", "blue", "center"),
    ("triangle", "yellow", "right"),
    ("heart", "purple", "top_left"),
    ("square", "green", "bottom"),
]


@pytest.mark.parametrize("shape,colour,position", QUERIES)
def test_image_to_image_neighbours_share_the_object(encoder, valid, shape, colour, position):
    image_ids, img, _, scenes = valid
    key = (shape, colour)
    holders = [iid for iid, sc in scenes.items() if key in {(o.shape, o.colour) for o in sc.objects}]
    assert len(holders) >= 5  # the check below means something
    # a fresh photo: seed outside the dataset's generators, one big object
    query = g.render_scene(g.simple_scene(shape, colour, position, bg_colour="beige"), rng=987654)
    q = encoder.encode_images([query])[0]
    top = np.argsort(-(img @ q), kind="stable")[:5]
    hits = [key in {(o.shape, o.colour) for o in scenes[image_ids[i]].objects} for i in top]
    assert hits[0] and sum(hits) >= 4, hits


def test_text_query_finds_its_object(encoder, valid):
    image_ids, img, _, scenes = valid
    q = encoder.encode_texts(["左边有一个红色的圆形"])[0]
    top = np.argsort(-(img @ q), kind="stable")[:5]
    hits = [("circle", "red") in {(o.shape, o.colour) for o in scenes[image_ids[i]].objects} for i in top]
    assert sum(hits) >= 4, hits
