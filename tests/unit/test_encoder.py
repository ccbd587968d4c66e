"""The encoder: local loading only, normalised float32, golden outputs, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cn_clip.clip import tokenize
from PIL import Image

from operations.encoding.base import encode_in_length_groups, length_groups
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import ModelSpec, ModelUnavailable, resolve_architecture
from operations.errors import InvalidInput
from tests.stack import TINY_ARCH, tiny_encoder


def test_outputs_are_normalised_float32_and_batch_independent():
    enc = tiny_encoder()
    texts = ["红色的圆形", "一只在草地上奔跑的小狗，旁边有一个蓝色的球", "猫"]
    batch = enc.encode_texts(texts)
    assert batch.dtype == np.float32 and batch.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-5)
    one_by_one = np.stack([enc.encode_texts([t])[0] for t in texts])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    images = [Image.new("RGB", (40 + 7 * i, 30), (40 * i, 90, 200)) for i in range(3)]
    feats = enc.encode_images(images)
    assert feats.dtype == np.float32 and feats.shape == (3, enc.dim)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)


def test_length_groups_cover_every_row_once_within_the_spread():
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 7, 40):
        lengths = rng.integers(3, 53, n)
        groups = length_groups(lengths, spread=4)
        rows = np.concatenate(groups) if groups else np.zeros(0, int)
        assert sorted(rows.tolist()) == list(range(n))
        for g in groups:
            assert lengths[g].max() - lengths[g].min() <= 4
        # Shortest first, and no two neighbouring groups could have been one.
        for a, b in zip(groups, groups[1:], strict=False):
            assert lengths[b].max() - lengths[a].min() > 4 and lengths[a].max() <= lengths[b].min()


def test_encode_in_length_groups_trims_each_group_and_keeps_row_order():
    tokens = np.array(
        [[101, 5, 102, 0, 0, 0, 0, 0, 0], [101, 5, 6, 7, 8, 9, 10, 11, 102], [101, 102, 0, 0, 0, 0, 0, 0, 0]]
    )
    widths = []

    def run(part):
        widths.append(part.shape)
        return part[:, :2].astype(np.float32) * 0 + part.shape[1]  # each row answers its pass's width

    out = encode_in_length_groups(tokens, run, dim=2)
    assert widths == [(2, 3), (1, 9)]
    assert out[:, 0].tolist() == [3, 9, 3]


def test_torch_encoder_runs_mixed_lengths_in_groups_and_equals_one_by_one():
    enc = tiny_encoder()
    texts = ["猫", "一只在草地上奔跑的小狗，旁边有一个蓝色的球", "红色", "左边有一个红色的圆形"]
    widths = []
    real = enc._encode_tokens
    enc._encode_tokens = lambda part: widths.append(part.shape) or real(part)
    batch = enc.encode_texts(texts)
    assert widths == [(2, 4), (1, 12), (1, 23)]
    one_by_one = np.concatenate([real(enc.tokenize([t]).numpy()) for t in texts])
    np.testing.assert_allclose(
        batch, one_by_one / np.linalg.norm(one_by_one, axis=1, keepdims=True), atol=1e-5
    )


def test_trimmed_padding_gives_the_published_full_context_features():
    enc = tiny_encoder()
    texts = ["左边有一个红色的圆形", "蓝色"]
    with torch.no_grad():
        full = enc.model.encode_text(tokenize(texts, 52)).float().numpy()
    full /= np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose(enc.encode_texts(texts), full, atol=1e-5)


def test_golden_outputs_are_stable():
    """Stored embeddings pin the whole path: tokenizer, model build, seed, transform, normalisation."""
    golden = json.loads((TINY_ARCH.parent / "golden_tiny.json").read_text(encoding="utf-8"))
    enc = ClipEncoder.load(
        ModelSpec(name="tiny", arch=str(TINY_ARCH), random_init=True, seed=0, device="cpu")
    )
    np.testing.assert_allclose(enc.encode_texts(golden["texts"]), golden["text_features"], atol=1e-5)
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    np.testing.assert_allclose(enc.encode_images([image]), golden["image_features"], atol=1e-5)


def test_too_long_or_empty_query_is_an_error_not_a_silent_truncation():
    enc = tiny_encoder()
    enc.check_text("五十个字以内的句子")
    with pytest.raises(InvalidInput, match="52"):
        enc.check_text("很" * 51)
    with pytest.raises(InvalidInput):
        enc.check_text("   ")


def test_missing_checkpoints_fail_with_one_clear_message(tmp_path):
    with pytest.raises(ModelUnavailable, match="no download is attempted"):
        ClipEncoder.load(ModelSpec(name="RN50", download_root=tmp_path))
    with pytest.raises(ModelUnavailable, match="not a cn_clip model"):
        ClipEncoder.load(ModelSpec(name="my-model", download_root=tmp_path))
    with pytest.raises(ModelUnavailable):
        resolve_architecture(str(tmp_path / "missing.json"))


def test_checkpoint_round_trip_through_the_download_root_layout(tmp_path):
    src = tiny_encoder()
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in src.model.state_dict().items()}}, ckpt)
    loaded = ClipEncoder.load(ModelSpec(name="tiny", checkpoint=ckpt, arch=str(TINY_ARCH), device="cpu"))
    np.testing.assert_allclose(loaded.encode_texts(["图片"]), src.encode_texts(["图片"]), atol=1e-6)
    assert resolve_architecture("RN50")["embed_dim"] == 1024
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, bad)
    with pytest.raises(ModelUnavailable, match="does not fit"):
        ClipEncoder.load(ModelSpec(name="tiny", checkpoint=bad, arch=str(TINY_ARCH), device="cpu"))


def test_text_is_prepared_as_cn_clip_prepares_it():
    enc = tiny_encoder()
    np.testing.assert_allclose(
        enc.encode_texts(["“红色”的CAR"]), enc.encode_texts(['"红色"的car']), atol=1e-6
    )


def test_lazy_encoder_reads_weights_on_first_encode_only(tmp_path):
    """The CLI's encoder: name and dim without the weights; the same features once used."""
    from operations.encoding.lazy_encoder import LazyClipEncoder

    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_encoder().model.state_dict()}, ckpt)
    spec = ModelSpec(name="tiny", checkpoint=ckpt, arch=str(TINY_ARCH), device="cpu")
    lazy = LazyClipEncoder(spec)
    assert (lazy.model_name, lazy.dim, lazy.loaded) == ("tiny", tiny_encoder().dim, False)
    texts = ["红色的圆形", "猫"]
    np.testing.assert_allclose(
        lazy.encode_texts(texts), ClipEncoder.load(spec).encode_texts(texts), atol=1e-6
    )
    assert lazy.loaded
    with pytest.raises(ModelUnavailable, match="not found"):
        LazyClipEncoder(ModelSpec(name="tiny", checkpoint=tmp_path / "missing.pt", arch=str(TINY_ARCH)))
    with pytest.raises(ModelUnavailable, match="no download"):
        LazyClipEncoder(ModelSpec(name="RN50", download_root=tmp_path))


def test_loading_precomputed_features_never_reads_the_model(tmp_path):
    """`scripts.cli load` of a split with features keeps the model's weights
    out of memory (lazy encoder); the rows and vectors still all arrive."""
    from operations.encoding.lazy_encoder import LazyClipEncoder
    from operations.factory import build_services
    from operations.load import load_split
    from operations.progress import TqdmProgress
    from tests.stack import make_settings, write_dataset

    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_encoder().model.state_dict()}, ckpt)
    settings = make_settings(tmp_path, model_random_init=False, model_checkpoint=ckpt)
    svc = build_services(settings, lazy_model=True)
    assert isinstance(svc.encoder, LazyClipEncoder)
    ids, _ = write_dataset(settings.data_root / "ds", "valid", 12, svc.encoder.dim)
    try:
        report = load_split(svc, "lazy", settings.data_root / "ds", "valid", TqdmProgress("test"))
        assert (report.loaded, report.failed) == (12, 0)
        assert svc.vectors.count("lazy") == svc.images.count("lazy") == 12
        assert not svc.encoder.loaded
    finally:
        svc.vectors.close()
        svc.images.close()


def test_model_lookup_and_the_command_line_need_no_torch():
    """Name, dim and files of a model come from cn_clip's tables without importing
    torch (~500 MB), so `scripts.cli load` of precomputed features stays light; the
    tables read from cn_clip's source equal the imported ones."""
    import subprocess
    import sys

    from cn_clip.clip.utils import _MODEL_INFO, _MODELS

    from operations.encoding.model_files import cn_clip_tables

    assert cn_clip_tables() == (_MODELS, _MODEL_INFO)
    code = (
        "import sys, scripts.cli\n"
        "from operations.encoding.lazy_encoder import LazyClipEncoder\n"
        "from operations.encoding.model_files import ModelSpec\n"
        "e = LazyClipEncoder(ModelSpec(name='RN50', random_init=True, text_int8=True))\n"
        "assert (e.model_name, e.dim, e.text_int8) == ('RN50', 1024, True), (e.model_name, e.dim)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'cn_clip.clip') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(TINY_ARCH.parents[2]),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_model_tables_fall_back_to_importing_cn_clip(tmp_path, monkeypatch):
    """Should cn_clip's utils.py stop holding its tables as plain literals, the
    lookup imports the module instead of failing."""
    from cn_clip.clip.utils import _MODEL_INFO, _MODELS

    from operations.encoding import model_files

    (tmp_path / "utils.py").write_text("_MODELS = dict(**{'RN50': ('x', 'y')})\n_MODEL_INFO = {}\n")
    monkeypatch.setattr(model_files, "cn_clip_dir", lambda: tmp_path)
    model_files.cn_clip_tables.cache_clear()
    try:
        assert model_files.cn_clip_tables() == (_MODELS, _MODEL_INFO)
    finally:
        model_files.cn_clip_tables.cache_clear()
