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
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
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


def _objects(scene) -> set[tuple[str, str]]:
    return {(o.shape, o.colour) for o in scene.objects}


def test_image_to_image_neighbours_share_objects_far_above_chance(encoder, valid):
    """A scene finds scenes with the same objects: its nearest stored images share a
    (shape, colour) object with it several times more often than random pairs do."""
    image_ids, img, _, scenes = valid
    objs = [_objects(scenes[i]) for i in image_ids]
    rng = np.random.default_rng(1)
    queries = rng.choice(len(image_ids), 200, replace=False)
    sims = img[queries] @ img.T
    sims[np.arange(len(queries)), queries] = -np.inf  # a scene is not its own neighbour
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    share = np.mean([bool(objs[q] & objs[j]) for q, row in zip(queries, top) for j in row])
    pairs = rng.integers(0, len(image_ids), size=(5000, 2))
    chance = np.mean([bool(objs[a] & objs[b]) for a, b in pairs if a != b])
    assert share >= 3 * chance, (share, chance)


def test_a_text_query_ranks_its_object_far_above_chance(encoder, valid):
    """Single-object queries "一个<颜色>的<形状>", one for every (shape, colour) that at
    least 5 valid images hold (about 70): their top 10 hold the object several
    times more often than its base rate. (Over all objects rather than a handful
    of hand-picked ones, so one unlucky query does not decide.)"""
    from datasets import demo_generator as g

    image_ids, img, _, scenes = valid
    holders: dict[tuple[str, str], int] = {}
    for scene in scenes.values():
        for key in _objects(scene):
            holders[key] = holders.get(key, 0) + 1
    keys = sorted(k for k, n in holders.items() if n >= 5)
    assert len(keys) >= 30
    queries = encoder.encode_texts([f"一个{g.COLOURS[c][0]}的{g.SHAPES[s][0]}" for s, c in keys])
    top = np.argsort(-(queries @ img.T), axis=1, kind="stable")[:, :10]
    hit_rate = np.mean([key in _objects(scenes[image_ids[j]]) for key, row in zip(keys, top) for j in row])
    base_rate = np.mean([holders[k] / len(scenes) for k in keys])
    assert hit_rate >= 3 * base_rate, (hit_rate, base_rate)


def test_int8_text_tower_keeps_retrieval_and_leaves_images_alone(encoder, valid):
    """TEXT_INT8 quantises only the text tower's Linear layers: image vectors are
    unchanged, text vectors stay close to float32, and text-to-image retrieval on
    the valid split keeps its recall and nearly all of its top 10."""
    image_ids, img, texts, _ = valid
    int8 = ClipEncoder.load(
        ModelSpec(name="demo-tiny", checkpoint=CHECKPOINT, arch=str(ARCH), device="cpu", text_int8=True)
    )
    assert int8.text_int8 and not encoder.text_int8
    quantized = [
        m for m in int8.model.bert.modules() if type(m).__module__.startswith("torch.ao.nn.quantized")
    ]
    assert quantized, "no quantized layers in the text tower"
    assert not any(
        type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.model.visual.modules()
    )
    scenes_img = [g.render_scene(g.simple_scene("circle", "red", "left"), 1)]
    assert np.array_equal(int8.encode_images(scenes_img), encoder.encode_images(scenes_img))

    queries = [t["text"] for t in texts[:600]]
    fp, q8 = encoder.encode_texts(queries), int8.encode_texts(queries)
    assert np.allclose(np.linalg.norm(q8, axis=1), 1.0, atol=1e-5)
    cos = np.sum(fp * q8, axis=1)
    assert cos.min() > 0.98 and np.median(cos) > 0.995, (cos.min(), np.median(cos))
    top_fp = np.argsort(-(fp @ img.T), axis=1)[:, :10]
    top_q8 = np.argsort(-(q8 @ img.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_fp, top_q8)])
    assert overlap > 0.9, overlap
    sub = texts[:600]
    r10_fp = _recall_at(fp @ img.T, image_ids, sub, 10)
    r10_q8 = _recall_at(q8 @ img.T, image_ids, sub, 10)
    assert abs(r10_fp - r10_q8) <= 0.02, (r10_fp, r10_q8)
