"""The add path's pieces: cn_clip's image transform reproduced bit for bit, the fair
model lock, and the chunked add pipeline (a failing chunk leaves no row without its
vector, earlier chunks stay added), on Milvus Lite + SQLite."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from cn_clip.clip import image_transform
from PIL import Image

from operations import deadline
from operations.encoding.base import FairLock
from operations.encoding.preprocess import FastImageTransform
from operations.ingest import ADD_CHUNK, Upload, add_images
from tests.stack import jpeg, make_services, make_settings, tiny_encoder, unique


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_fast_transform_is_cn_clips_transform_bit_for_bit(mode):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (301, 457, 3), dtype=np.uint8)).convert(mode)
    for size in (224, 64):
        assert torch.equal(FastImageTransform(size)(image), image_transform(size)(image))


def test_fair_lock_is_granted_in_request_order():
    lock, order = FairLock(), []
    lock.__enter__()
    threads = []
    for i in range(5):
        t = threading.Thread(target=lambda i=i: (lock.__enter__(), order.append(i), lock.__exit__()))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # each asks after the previous one
    lock.__exit__()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]


class FailingEncoder:
    """The tiny model, failing on its n-th forward pass."""

    def __init__(self, fail_on: int) -> None:
        self.inner, self.fail_on, self.passes = tiny_encoder(), fail_on, 0
        self.model_name, self.dim, self.context_length = "tiny", self.inner.dim, 52

    def check_text(self, text):
        self.inner.check_text(text)

    def encode_texts(self, texts):
        return self.inner.encode_texts(texts)

    def preprocess_images(self, images):
        return self.inner.preprocess_images(images)

    def encode_pixels(self, pixels):
        self.passes += 1
        if self.passes == self.fail_on:
            raise RuntimeError("encoder failed")
        return self.inner.encode_pixels(pixels)

    def encode_images(self, images):
        return self.encode_pixels(self.preprocess_images(images))


def test_a_failed_chunk_is_taken_back_and_earlier_chunks_stay(tmp_path):
    svc = make_services(make_settings(tmp_path))
    name = unique("ap")
    svc.ensure_collection(name)
    svc.encoders.default = svc.encoders._loaded["tiny"] = FailingEncoder(fail_on=2)
    uploads = [Upload(f"{i}.jpg", jpeg(i)) for i in range(ADD_CHUNK * 3)]
    with pytest.raises(RuntimeError):
        add_images(svc, name, uploads)
    # Chunk 1 is in both stores; chunks 2 and 3 (already prepared) in neither.
    assert svc.images.count(name) == ADD_CHUNK
    assert svc.vectors.count(name) == ADD_CHUNK
    assert svc.images.unindexed_ids(name, 100) == []
    # Again with a working encoder: the first chunk is "present", the rest added, in order.
    svc.encoders.default = svc.encoders._loaded["tiny"] = tiny_encoder()
    results = add_images(svc, name, uploads)
    assert [r.index for r in results] == list(range(len(uploads)))
    assert [r.status for r in results] == ["present"] * ADD_CHUNK + ["added"] * (2 * ADD_CHUNK)
    assert svc.vectors.count(name) == svc.images.count(name) == 3 * ADD_CHUNK
    # The stored vector is the model's vector of the upload.
    last = Image.open(io.BytesIO(uploads[-1].data)).convert("RGB")
    want = tiny_encoder().encode_images([last])
    got = svc.vectors.get_vectors(name, [results[-1].id])[results[-1].id]
    np.testing.assert_allclose(got, want[0], atol=1e-5)


def test_the_prepare_stage_draws_on_the_requests_store_budget(tmp_path):
    # The prepare stage's SQL calls run on a helper thread; their waiting must count
    # against the request's SQL budget, or an add could wait one SQL_TIMEOUT_S in each
    # thread (operations/deadline.py).
    svc = make_services(make_settings(tmp_path))
    name = unique("budget")
    svc.ensure_collection(name)
    seen = []
    insert_new = svc.images.insert_new

    def recording_insert(collection, row):
        with deadline.store_call("mysql", 10.0):
            seen.append(threading.current_thread().name)
            time.sleep(0.05)
        return insert_new(collection, row)

    svc.images.insert_new = recording_insert
    with deadline.request_scope():
        add_images(svc, name, [Upload(f"{i}.jpg", jpeg(200 + i)) for i in range(2)])
        waited = deadline._request.get().waited  # the request's own budget
    assert seen and all(t.startswith("add-prepare") for t in seen)
    assert waited.get("mysql", 0.0) >= 0.1
