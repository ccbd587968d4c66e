"""ONNX encoder fixtures: one export cache per test session, models exported once per session.

Every test (and every server or CLI it starts as a subprocess) writes exported
towers into the session's temporary ONNX_CACHE_DIR, never into models/onnx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_CHECKPOINT = REPO / "models" / "demo" / "demo-tiny.pt"
DEMO_ARCH = REPO / "config" / "model_configs" / "demo-tiny.json"


@pytest.fixture(scope="session", autouse=True)
def onnx_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's ONNX export cache (also exported as ONNX_CACHE_DIR to subprocesses)."""
    path = tmp_path_factory.mktemp("onnx-cache")
    previous = os.environ.get("ONNX_CACHE_DIR")
    os.environ["ONNX_CACHE_DIR"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("ONNX_CACHE_DIR", None)
        else:
            os.environ["ONNX_CACHE_DIR"] = previous


def _pair(spec, cache_dir: Path):
    from operations.encoding.clip_encoder import ClipEncoder
    from operations.encoding.onnx_export import onnx_encoder_for

    torch_encoder = ClipEncoder.load(spec)
    return torch_encoder, onnx_encoder_for(torch_encoder, spec, cache_dir)


@pytest.fixture(scope="session")
def demo_spec():
    from operations.encoding.model_files import ModelSpec

    return ModelSpec(name="demo-tiny", checkpoint=DEMO_CHECKPOINT, arch=str(DEMO_ARCH), device="cpu")


@pytest.fixture(scope="session")
def demo_pair(demo_spec, onnx_cache_dir):
    """(torch encoder, verified ONNX encoder) of the committed demo model."""
    return _pair(demo_spec, onnx_cache_dir)


@pytest.fixture(scope="session")
def rn50_pair(onnx_cache_dir):
    """(torch, ONNX) of the real RN50@RBT3-chinese architecture (1024-d) with random weights."""
    from operations.encoding.model_files import ModelSpec

    return _pair(ModelSpec(name="RN50", random_init=True, seed=0, device="cpu"), onnx_cache_dir)
