"""Features written by the extraction equal the service encoder's own results."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.formats import iter_features, write_image_tsv, write_texts_jsonl
from datasets.lmdb_io import build_lmdb
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec
from operations.evaluation import cli
from operations.evaluation.extract import (
    cn_clip_text_preprocess,
    extract_image_features,
    extract_text_features,
)

TINY_ARCH = Path(__file__).resolve().parents[1] / "data" / "tiny-arch.json"


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    return ClipEncoder.load(
        ModelSpec(name="tiny", arch=str(TINY_ARCH), random_init=True, seed=0, device="cpu")
    )


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    images = {}
    for i, (size, mode, fmt) in enumerate(
        [
            ((40, 30), "RGB", "JPEG"),
            ((17, 60), "L", "PNG"),
            ((64, 64), "RGBA", "PNG"),
            ((33, 33), "RGB", "PNG"),
            ((50, 20), "P", "PNG"),
            ((31, 45), "RGB", "JPEG"),
        ]
    ):
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        im = Image.fromarray(arr, "RGB").convert(mode)
        images[101 + i] = encoded(im, fmt)
    rows = list(images.items())
    rows.insert(3, (999, b"definitely not an image"))  # valid base64, undecodable: reported
    write_image_tsv(d / "valid_imgs.tsv", rows)
    texts = [
        (1, "一只红色的圆形", [101]),
        (2, "蓝色的方块在左边", [102]),
        (3, "Hello 世界", [103]),
        (4, "“引号”里的猫", [104]),
        (5, "绿色", [105, 106]),
    ]
    write_texts_jsonl(d / "valid_texts.jsonl", texts)
    build_lmdb(d, "valid")
    return d, images, texts


def read_feats(path, key):
    recs = list(iter_features(path, key))
    return {r.id: r.vector for r in recs}


def expected_image_feats(encoder, images):
    ids = sorted(images)
    pil = [Image.open(io.BytesIO(images[i])) for i in ids]
    return dict(zip(ids, encoder.encode_images(pil)))


@pytest.mark.parametrize("source", ["tsv", "lmdb"])
def test_image_features_equal_encoder(encoder, dataset, tmp_path, source):
    d, images, _ = dataset
    src = d / "valid_imgs.tsv" if source == "tsv" else d / "lmdb" / "valid" / "imgs"
    report = extract_image_features(
        encoder, src, tmp_path / "f.jsonl", batch_size=2, workers=2, progress=False
    )
    assert report.written == len(images)
    assert len(report.bad) == 1 and report.bad[0].record_id == 999 and "decode" in report.bad[0].reason
    got = read_feats(tmp_path / "f.jsonl", "image_id")
    want = expected_image_feats(encoder, images)
    assert set(got) == set(want)
    for i in want:
        np.testing.assert_allclose(got[i], want[i], atol=1e-5)
        assert abs(np.linalg.norm(got[i]) - 1) < 1e-5
    # Different images give different features: the comparison is not vacuous.
    assert not np.allclose(got[101], got[102], atol=1e-3)


def test_text_features_equal_encoder(encoder, dataset, tmp_path):
    d, _, texts = dataset
    report = extract_text_features(
        encoder, d / "valid_texts.jsonl", tmp_path / "t.jsonl", batch_size=2, progress=False
    )
    assert report.written == len(texts) and not report.bad
    got = read_feats(tmp_path / "t.jsonl", "text_id")
    # The service's encoder prepares text as cn_clip does (curly quotes included),
    # so every extracted feature equals the one the service computes.
    want = encoder.encode_texts([t[1] for t in texts])
    for (tid, _, _), w in zip(texts, want):
        np.testing.assert_allclose(got[tid], w, atol=1e-5)
    np.testing.assert_allclose(got[4], encoder.encode_texts(['"引号"里的猫'])[0], atol=1e-5)
    assert cn_clip_text_preprocess("ABC“x”") == 'abc"x"'


@pytest.mark.parametrize("source", ["tsv", "lmdb"])
def test_cli_extract_writes_cn_clip_files(encoder, dataset, tmp_path, capsys, source):
    d, images, texts = dataset
    img_out, txt_out = tmp_path / "img.jsonl", tmp_path / "txt.jsonl"
    rc = cli.main(
        [
            "extract",
            "--dataset-dir",
            str(d),
            "--split",
            "valid",
            "--image-source",
            source,
            "--image-feat-output",
            str(img_out),
            "--text-feat-output",
            str(txt_out),
            "--model-name",
            "tiny",
            "--arch",
            str(TINY_ARCH),
            "--random-init",
            "--device",
            "cpu",
            "--img-batch-size",
            "4",
            "--quiet",
        ]
    )
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"]["written"] == len(images) and summary["images"]["bad"] == 1
    assert summary["texts"]["written"] == len(texts) and summary["dim"] == encoder.dim
    got = read_feats(img_out, "image_id")
    for i, w in expected_image_feats(encoder, images).items():
        np.testing.assert_allclose(got[i], w, atol=1e-5)
    got_t = read_feats(txt_out, "text_id")
    np.testing.assert_allclose(got_t[1], encoder.encode_texts(["一只红色的圆形"])[0], atol=1e-5)


class PickyEncoder:
    """The tiny encoder, except that its transform fails on 17-pixel-wide images."""

    def __init__(self, inner: ClipEncoder) -> None:
        self.inner, self.dim = inner, inner.dim

    def preprocess_images(self, images):
        if any(im.size[0] == 17 for im in images):
            raise ValueError("unsupported image")
        return self.inner.preprocess_images(images)

    def encode_pixels(self, pixels):
        return self.inner.encode_pixels(pixels)


def test_transform_failure_isolated_to_its_image(encoder, dataset, tmp_path):
    d, images, _ = dataset
    report = extract_image_features(
        PickyEncoder(encoder), d / "valid_imgs.tsv", tmp_path / "f.jsonl", batch_size=3, progress=False
    )
    assert report.written == len(images) - 1
    assert sorted(b.record_id for b in report.bad) == [102, 999]
    assert any("preprocess" in b.reason for b in report.bad)
    got = read_feats(tmp_path / "f.jsonl", "image_id")
    want = expected_image_feats(encoder, {k: v for k, v in images.items() if k != 102})
    assert set(got) == set(want)
    for i in want:
        np.testing.assert_allclose(got[i], want[i], atol=1e-5)
