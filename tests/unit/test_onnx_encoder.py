"""ONNX Runtime encoders: equal to torch, verified before use, cached, and serving end to end.

RN50 (the real RN50@RBT3-chinese shape, random weights) and the committed demo
model are exported once per session into the session's cache (fixtures_onnx). A test about an
existing cache starts from a copy of that verified export, as a later process would find it;
only the exports a test is about run in it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from datasets import demo_generator as g
from operations.encoding import onnx_export
from operations.encoding.backends import load_encoder
from operations.encoding.base import FairLock, on_every_core
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec, ModelUnavailable
from operations.encoding.onnx_encoder import SMALL_TEXT_BATCH, OnnxClipEncoder
from operations.encoding.onnx_export import ExportFailed, onnx_encoder_for
from tests.fixtures_onnx import DEMO_ARCH, DEMO_CHECKPOINT

MIN_COSINE = 0.9999
CHARS = "的一是在有个人这上中大为来我们到说国和地也子时道出而要于就下得可自之年过发后作里用如家多"


def texts_of_many_lengths(seed: int = 7) -> list[str]:
    """1 to 50 characters (3 to 52 tokens), Chinese with some Latin, digits and punctuation."""
    rng = np.random.default_rng(seed)
    out = ["猫", "Go", "红色的圆形", "iPhone 15 手机壳，黑色！", "“引号”（括号）"]
    for n in (1, 2, 3, 5, 8, 13, 21, 30, 40, 47, 49, 50):
        out.append("".join(rng.choice(list(CHARS), n)))
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    return np.sum(a * b, axis=1)


def synthetic_images(n: int, seed: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (500, 375), (97, 301), (224, 224), (64, 48)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)][::-1], 3), dtype=np.uint8))
        for i in range(n)
    ]


def assert_same_encoder(torch_enc: ClipEncoder, onnx_enc: OnnxClipEncoder, images: list[Image.Image]):
    texts = texts_of_many_lengths()
    one_by_one = np.concatenate([torch_enc.encode_texts([t]) for t in texts])
    # alone, small batches (text session), a batch over SMALL_TEXT_BATCH (the all-cores session)
    for got in (
        np.concatenate([onnx_enc.encode_texts([t]) for t in texts]),
        np.concatenate([onnx_enc.encode_texts(texts[i : i + 3]) for i in range(0, len(texts), 3)]),
        onnx_enc.encode_texts(texts),
    ):
        assert cosines(got, one_by_one).min() >= MIN_COSINE
    assert len(texts) > SMALL_TEXT_BATCH
    np.testing.assert_allclose(np.linalg.norm(onnx_enc.encode_texts(texts), axis=1), 1, atol=1e-5)
    ref = torch_enc.encode_images(images)
    assert cosines(onnx_enc.encode_images(images[:1]), ref[:1]).min() >= MIN_COSINE
    assert cosines(onnx_enc.encode_images(images), ref).min() >= MIN_COSINE
    assert onnx_enc.encode_texts([]).shape == (0, onnx_enc.dim)


# --- equality -------------------------------------------------------------------


@pytest.mark.services  # a big model: exports RN50 (about 300 MB of ONNX) once per session
def test_rn50_onnx_equals_torch(rn50_pair):
    torch_enc, onnx_enc = rn50_pair
    assert onnx_enc.dim == 1024 and onnx_enc.backend == "onnx"
    assert_same_encoder(torch_enc, onnx_enc, synthetic_images(5))


def test_demo_model_onnx_equals_torch(demo_pair):
    torch_enc, onnx_enc = demo_pair
    data = g.generate_split("valid", 12)
    photos = [Image.open(io.BytesIO(b)) for b in data.jpegs]
    assert_same_encoder(torch_enc, onnx_enc, photos + synthetic_images(3))
    # the evaluation's pixel path (preprocessed batches) is the same graph
    pixels = onnx_enc.preprocess_images(photos)
    np.testing.assert_allclose(onnx_enc.encode_pixels(pixels), torch_enc.encode_pixels(pixels), atol=1e-4)


@contextlib.contextmanager
def text_passes(onnx_enc):
    """The shapes of the token arrays the small-batch text session runs within the block."""
    seen = []
    real_run = onnx_enc._text.run

    class Spy:
        def run(self, names, feeds):
            seen.append(feeds["text"].shape)
            return real_run(names, feeds)

    onnx_enc._text, original = Spy(), onnx_enc._text
    try:
        yield seen
    finally:
        onnx_enc._text = original


def test_text_input_is_as_wide_as_the_longest_text_not_52(demo_pair):
    _, onnx_enc = demo_pair
    with text_passes(onnx_enc) as seen:
        onnx_enc.encode_texts(["猫"])
        onnx_enc.encode_texts(["红色的圆形", "猫"])
    assert seen == [(1, 3), (2, 7)]


def test_a_batch_of_mixed_lengths_runs_in_length_groups_with_each_text_its_own_result(demo_pair):
    torch_enc, onnx_enc = demo_pair
    texts = ["猫", "一只在草地上奔跑的小狗，旁边有一个蓝色的球", "红色", "左边有一个红色的圆形", "狗"]
    with text_passes(onnx_enc) as seen:
        batch = onnx_enc.encode_texts(texts)
    # 3, 3 and 4 tokens in one pass; 12 and 23 apart: no pass pads a text by more than 4 tokens.
    assert seen == [(3, 4), (1, 12), (1, 23)]
    alone = np.concatenate([onnx_enc.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    np.testing.assert_allclose(batch, torch_enc.encode_texts(texts), atol=1e-4)


def test_a_lone_query_spreads_over_every_core_unless_an_image_batch_holds_them(demo_pair):
    torch_enc, verified = demo_pair
    enc = OnnxClipEncoder(
        torch_enc, verified.text_model, verified.image_model, text_threads=1, image_threads=2
    )
    texts = ["红色的圆形", "猫"]
    want = np.concatenate([enc.encode_texts([t]) for t in texts])
    assert enc._bulk_text is None  # small batches stay on the one-thread session
    with on_every_core():
        spread = np.concatenate([enc.encode_texts([t]) for t in texts])
    assert enc._bulk_text is not None  # ... unless every core is asked for
    assert cosines(spread, want).min() >= MIN_COSINE

    # An image batch holds the cores (another thread): the query does not wait for
    # it but runs on its own one-thread session at once.
    enc._bulk_text = None
    holder_in, holder_out = threading.Event(), threading.Event()

    def hold():
        with enc._all_cores:
            holder_in.set()
            holder_out.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holder_in.wait(10)
        t = time.monotonic()
        with on_every_core():
            got = enc.encode_texts(texts[:1])
        assert time.monotonic() - t < 5
        assert enc._bulk_text is None
        assert cosines(got, want[:1]).min() >= MIN_COSINE
    finally:
        holder_out.set()
        holder.join(10)


# --- a careless export is caught --------------------------------------------------


class _NoMaskText(torch.nn.Module):
    """The classic mistake: BERT without the pad mask (and so attending to padding)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, text):
        x = self.model.bert(text)[0]
        return x[:, 0, :] @ self.model.text_projection


REAL_EXPORT = onnx_export.export_towers


@pytest.fixture(scope="session")
def demo_export(demo_pair, demo_spec, onnx_cache_dir) -> Path:
    """The session's verified export folder of the demo model."""
    folder, _ = onnx_export.cache_folder(demo_spec, onnx_cache_dir)
    assert (folder / onnx_export.META_FILE).is_file()
    return folder


def seed_cache(demo_export: Path, cache: Path) -> Path:
    """`cache` holding a copy of the verified demo export (its float32 files), as a process that
    exported earlier left it; the cache key does not depend on the cache's location."""
    folder = cache / demo_export.name
    folder.mkdir(parents=True)
    for name in (onnx_export.TEXT_FILE, onnx_export.IMAGE_FILE, onnx_export.META_FILE):
        shutil.copy(demo_export / name, folder / name)
    return folder


@pytest.fixture
def careless_export(demo_export):
    """An exporter of the demo model with a wrong text tower beside a correct image tower (the
    session's: only the text tower is under test, so only it is exported)."""

    def export(encoder: ClipEncoder, folder: Path) -> None:
        assert encoder.model_name == "demo-tiny", "the copied image tower is the demo model's"
        shutil.copy(demo_export / onnx_export.IMAGE_FILE, folder / onnx_export.IMAGE_FILE)
        with torch.no_grad():
            torch.onnx.export(
                _NoMaskText(encoder.model).eval(),
                (encoder.tokenize(["一只黑色的猫在草地上", "红色"]),),
                str(folder / onnx_export.TEXT_FILE),
                input_names=["text"],
                output_names=["features"],
                dynamic_axes={"text": {0: "batch", 1: "length"}, "features": {0: "batch"}},
                opset_version=onnx_export.OPSET,
                dynamo=False,
            )

    return export


def demo(tmp_path: Path, backend: str, **kw) -> ModelSpec:
    """The trained demo model (random weights hardly notice a missing pad mask; trained ones do)."""
    return ModelSpec(
        name="demo-tiny",
        checkpoint=DEMO_CHECKPOINT,
        arch=str(DEMO_ARCH),
        device="cpu",
        backend=backend,
        onnx_cache_dir=tmp_path / "cache",
        **kw,
    )


def test_a_careless_text_export_fails_verification(tmp_path, careless_export):
    spec = demo(tmp_path, "onnx")
    encoder = ClipEncoder.load(spec)
    with pytest.raises(ExportFailed, match=r"text cosine to torch -?0\.\d+ < 0\.9999 \(batch of"):
        onnx_encoder_for(encoder, spec, tmp_path / "cache", exporter=careless_export)
    assert not list((tmp_path / "cache").iterdir()), "a failed export must leave nothing cached"


def test_auto_falls_back_to_torch_and_onnx_fails_the_start(tmp_path, monkeypatch, caplog, careless_export):
    monkeypatch.setattr(onnx_export, "export_towers", careless_export)
    with caplog.at_level(logging.WARNING):
        enc = load_encoder(demo(tmp_path, "auto", text_int8=True))
    assert isinstance(enc, ClipEncoder) and enc.backend == "torch" and enc.text_int8
    lines = [r.getMessage() for r in caplog.records if "serving with torch" in r.getMessage()]
    assert len(lines) == 1 and "text cosine to torch" in lines[0] and "\n" not in lines[0]
    with pytest.raises(
        ModelUnavailable, match="ENCODER_BACKEND=onnx: no verified ONNX encoder for demo-tiny"
    ):
        load_encoder(demo(tmp_path, "onnx"))
    assert isinstance(load_encoder(demo(tmp_path, "torch")), ClipEncoder)


# --- the cache -------------------------------------------------------------------


@pytest.fixture
def count_exports(monkeypatch):
    calls = []

    def counting(encoder, folder):
        calls.append(folder)
        REAL_EXPORT(encoder, folder)

    monkeypatch.setattr(onnx_export, "export_towers", counting)
    return calls


def _demo_copy(tmp_path: Path) -> ModelSpec:
    ckpt = tmp_path / "demo.pt"
    shutil.copy(DEMO_CHECKPOINT, ckpt)
    return ModelSpec(
        name="demo-tiny",
        checkpoint=ckpt,
        arch=str(DEMO_ARCH),
        device="cpu",
        backend="onnx",
        onnx_cache_dir=tmp_path / "cache",
    )


def test_cache_is_reused_and_invalidated_by_a_new_checkpoint(tmp_path, count_exports, demo_export):
    spec = _demo_copy(tmp_path)
    seed_cache(demo_export, tmp_path / "cache")  # an earlier process exported this checkpoint
    first = load_encoder(spec)
    assert first.backend == "onnx" and not count_exports, "a cached export is not exported again"
    assert first.text_model.parent.name == demo_export.name
    assert first.model is None, "torch weights are released once ONNX serves"
    second = load_encoder(spec)
    assert second.backend == "onnx" and not count_exports
    texts = ["红色的圆形", "蓝色"]
    np.testing.assert_allclose(first.encode_texts(texts), second.encode_texts(texts), atol=1e-6)

    # a changed checkpoint (other weights, same architecture) is a new key and a new export
    state = torch.load(spec.checkpoint, weights_only=True)
    weights = state.get("state_dict", state)
    weights["text_projection"] = weights["text_projection"] * -1
    torch.save(state, spec.checkpoint)
    third = load_encoder(spec)
    assert len(count_exports) == 1 and len(list((tmp_path / "cache").iterdir())) == 2
    assert cosines(third.encode_texts(texts), first.encode_texts(texts)).max() < -0.99


def _tamper_weights(path: Path) -> None:
    """Noise of half their spread on every weight matrix the graph uses (still a valid model)."""
    model = onnx.load(str(path))
    used = {name for node in model.graph.node for name in node.input}
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if init.name in used and arr.dtype == np.float32 and arr.size > 1000:
            arr = arr + rng.normal(0, 0.5 * float(arr.std()), arr.shape).astype(np.float32)
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(path))


@pytest.mark.parametrize("damage", ["tampered text graph", "truncated image file"])
def test_a_damaged_cache_is_exported_again(tmp_path, count_exports, damage, caplog, demo_export, demo_pair):
    spec = demo(tmp_path, "onnx")
    folder = seed_cache(demo_export, tmp_path / "cache")
    if damage == "tampered text graph":
        _tamper_weights(folder / onnx_export.TEXT_FILE)
    else:
        data = (folder / onnx_export.IMAGE_FILE).read_bytes()
        (folder / onnx_export.IMAGE_FILE).write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        healed = load_encoder(spec)
    assert healed.backend == "onnx" and len(count_exports) == 1
    assert healed.text_model.parent == folder
    assert any("failed verification, exporting again" in r.getMessage() for r in caplog.records)
    texts = texts_of_many_lengths()
    ref = demo_pair[0].encode_texts(texts)  # the demo model on torch
    assert cosines(healed.encode_texts(texts), ref).min() >= MIN_COSINE


def test_a_damaged_cache_and_a_broken_exporter_fall_back(tmp_path, monkeypatch, demo_export, careless_export):
    spec = demo(tmp_path, "auto")
    folder = seed_cache(demo_export, tmp_path / "cache")
    assert load_encoder(spec).backend == "onnx"
    _tamper_weights(folder / onnx_export.IMAGE_FILE)
    monkeypatch.setattr(onnx_export, "export_towers", careless_export)
    assert load_encoder(spec).backend == "torch"
    with pytest.raises(ModelUnavailable, match="ENCODER_BACKEND=onnx"):
        load_encoder(demo(tmp_path, "onnx"))


# --- int8 ------------------------------------------------------------------------


def test_int8_onnx_text_tower_is_close_and_smaller(demo_pair, demo_spec, onnx_cache_dir):
    torch_enc, fp32 = demo_pair
    int8 = onnx_encoder_for(torch_enc, demo_spec, onnx_cache_dir, int8=True)
    assert int8.text_int8 and int8.text_model.name == onnx_export.TEXT_INT8_FILE
    assert int8.text_model.stat().st_size < fp32.text_model.stat().st_size
    texts = [t["text"] for t in g.generate_split("valid", 60).texts]
    a, b = fp32.encode_texts(texts), int8.encode_texts(texts)
    cos = cosines(a, b)
    assert cos.min() >= onnx_export.INT8_MIN_COSINE and cos.max() < 1 - 1e-7  # close, really int8
    # the image tower stays float32: stored vectors never depend on TEXT_INT8
    im = synthetic_images(2)
    np.testing.assert_allclose(int8.encode_images(im), fp32.encode_images(im), atol=1e-6)


# --- the evaluation pipeline --------------------------------------------------------


@pytest.mark.services  # a whole split (300 images, 900 captions) through the model, on each backend
def test_evaluation_pipeline_recall_is_the_same_with_onnx(tmp_path, demo_pair, capsys):
    from operations.evaluation.cli import main

    data_dir = tmp_path / "demo"
    g.write_split(g.generate_split("valid", 300), data_dir)
    model = ["--model-name", "demo-tiny", "--checkpoint", str(DEMO_CHECKPOINT), "--arch", str(DEMO_ARCH)]
    recalls = {}
    for backend in ("torch", "onnx"):
        img, txt = tmp_path / f"{backend}.img.jsonl", tmp_path / f"{backend}.txt.jsonl"
        pred = tmp_path / f"{backend}.pred.jsonl"
        common = ["--dataset-dir", str(data_dir), "--split", "valid"]
        args = ["extract", *common, *model, "--device", "cpu", "--encoder-backend", backend]
        args += ["--image-source", "tsv", "--image-feat-output", str(img), "--text-feat-output", str(txt)]
        assert main([*args, "--quiet"]) == 0
        assert f'"backend": "{backend}"' in capsys.readouterr().out
        assert (
            main(
                ["predict", *common, "--image-feats", str(img), "--text-feats", str(txt)]
                + ["--output", str(pred), "--quiet"]
            )
            == 0
        )
        capsys.readouterr()
        assert main(["evaluate", *common, "--predictions", str(pred)]) == 0
        recalls[backend] = capsys.readouterr().out
    assert recalls["onnx"] == recalls["torch"]
    assert '"success": true' in recalls["onnx"]


def test_work_folders_of_a_killed_export_are_cleaned_up(tmp_path):
    import os

    from operations.encoding.onnx_export import cache_folder

    spec = demo(tmp_path, "onnx")
    name = cache_folder(spec, tmp_path / "cache")[0].name
    stale, running = tmp_path / "cache" / f".{name}.old1", tmp_path / "cache" / f".{name}.now1"
    for d in (stale, running):
        d.mkdir(parents=True)
        (d / "text.onnx").write_bytes(b"half written")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    assert load_encoder(spec).backend == "onnx"  # an empty cache: exported and verified now
    assert not stale.exists() and running.exists()  # another process may still be exporting
    done = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in done] == [name] and (done[0] / onnx_export.META_FILE).is_file()


def test_fair_lock_try_acquire_never_jumps_the_queue():
    lock = FairLock()
    assert lock.try_acquire()
    assert not lock.try_acquire()  # held
    waiting = threading.Thread(target=lambda: lock.__enter__())
    waiting.start()
    time.sleep(0.1)  # the thread now holds a ticket and waits
    lock.release()
    waiting.join(5)
    assert not waiting.is_alive()
    assert not lock.try_acquire()  # held by the waiter, which took its turn
    lock.release()
    assert lock.try_acquire()
    lock.release()
