"""The text tower's last layer for [CLS] only (operations/encoding/cls_text.py): the same
vectors as cn_clip's `encode_text`, with the feed-forward pass of the last layer run for one
position a text, and cn_clip's own forward where the shortcut does not apply."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from operations.encoding import onnx_export
from operations.encoding.cls_text import encode_text_cls_only, supports_cls_only
from tests.stack import tiny_encoder

TEXTS = [
    "猫",
    "一只在草地上奔跑的小狗，旁边有一个蓝色的球",
    "红色",
    "Apple 手机 iPhone 15，价格 5999 元！",
    "五" * 50,
]


def _normalised(x: torch.Tensor) -> np.ndarray:
    x = x.float().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _both(model, tokens) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return _normalised(model.encode_text(tokens)), _normalised(encode_text_cls_only(model, tokens))


def test_equals_encode_text_on_padded_mixed_batches_tiny_and_rn50(rn50_pair):
    for enc in (tiny_encoder(), rn50_pair[0]):
        assert supports_cls_only(enc.model)
        published, cls_only = _both(enc.model, enc.tokenize(TEXTS))  # padded to the 52-token text
        np.testing.assert_allclose(cls_only, published, atol=1e-5)
        alone, _ = _both(enc.model, enc.tokenize(TEXTS[:1]))
        np.testing.assert_allclose(cls_only[:1], alone, atol=1e-5)  # padding changes nothing


def test_the_last_layer_feeds_one_position_a_text_forward():
    enc = tiny_encoder()
    seen = []
    dense = enc.model.bert.encoder.layer[-1].intermediate.dense
    handle = dense.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        tokens = enc.tokenize(TEXTS[:3])
        _both(enc.model, tokens)
    finally:
        handle.remove()
    width = tokens.shape[1]
    # cn_clip's forward: every position; this one: [CLS] alone.
    assert seen == [(3, width, dense.in_features), (3, 1, dense.in_features)]


def test_a_model_it_does_not_reproduce_is_exported_with_cn_clips_own_forward(monkeypatch):
    flash = SimpleNamespace(bert=SimpleNamespace(config=SimpleNamespace(use_flash_attention=True)))
    assert not supports_cls_only(flash)  # FlashMHA layers: not the stack cls_text reproduces
    enc = tiny_encoder()
    calls = []
    original = enc.model.encode_text
    monkeypatch.setattr(enc.model, "encode_text", lambda text: calls.append(text.shape) or original(text))
    monkeypatch.setattr(onnx_export, "supports_cls_only", lambda model: False)
    with torch.no_grad():
        onnx_export._TextTower(enc.model)(enc.tokenize(TEXTS[:2]))
    assert len(calls) == 1
