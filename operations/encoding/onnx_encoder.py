"""The Chinese-CLIP encoder on ONNX Runtime (CPU), over towers exported by `onnx_export`.

Tokenising, text normalisation, query checks and the image transform are the
torch encoder's own (the same functions), so only the two forward passes
change backend. Outputs follow the `Encoder` protocol: float32, (n, dim), each
row L2-normalised.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from operations.encoding.base import FairLock, encode_in_length_groups, every_core_requested, l2_normalise
from operations.encoding.clip_encoder import ClipEncoder
from operations.encoding.model_files import resolve_threads

# Text batches up to this size run on the text session (few threads); larger
# ones (feature extraction, a full micro-batch) on a session with the image
# thread count, since they have enough work to spread over every core.
SMALL_TEXT_BATCH = 8


def session_options(threads: int) -> ort.SessionOptions:
    """CPU session options with `threads` intra-op threads and no spinning.

    ORT's worker threads spin while waiting for work by default; on a server
    whose cores also run Milvus, SQL and HTTP that burns CPU the others need,
    so idle workers sleep instead. One inter-op thread: the graphs are chains.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(int(threads), 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers
    return options


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    """An ORT CPU session over the model file at `path`."""
    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


class OnnxClipEncoder:
    """ONNX Runtime text and image towers behind the `Encoder` protocol.

    Thread-safe: small text batches run concurrently (ORT sessions allow
    concurrent `run`; each uses `text_threads`); image batches, large text
    batches and a lone query's batch (`on_every_core`) use every allotted core
    and so run one at a time.
    """

    backend = "onnx"

    def __init__(
        self,
        base: ClipEncoder,
        text_model: Path,
        image_model: Path,
        text_threads: int | None = None,
        image_threads: int | None = None,
        text_int8: bool = False,
    ) -> None:
        """`base` supplies tokenizer, transform and names; `text_model` may be the int8 tower.

        Thread counts default to the base encoder's (ENCODER_TEXT_THREADS /
        ENCODER_IMAGE_THREADS); 0 means every available core.
        """
        self.base = base
        self.model_name = base.model_name
        self.dim = base.dim
        self.context_length = base.context_length
        self.image_resolution = base.image_resolution
        self.preprocess = base.preprocess
        self.half = False
        self.text_int8 = bool(text_int8)
        self.text_model = Path(text_model)
        self.image_model = Path(image_model)
        self.text_threads = resolve_threads(base.text_threads if text_threads is None else text_threads)
        self.image_threads = resolve_threads(base.image_threads if image_threads is None else image_threads)
        self._text = open_session(self.text_model, self.text_threads)
        self._image = open_session(self.image_model, self.image_threads)
        self._bulk_text: ort.InferenceSession | None = None
        self._all_cores = FairLock()  # in request order: a query batch never waits out a bulk add

    @property
    def identity(self) -> str:
        """The exported files this encoder runs (cache folder and text tower): a cache key part."""
        return f"{self.text_model.parent.name}/{self.text_model.name}"

    @property
    def model(self):
        """The torch model the towers were exported from (None once released)."""
        return self.base.model

    def release_torch(self) -> None:
        """Drop the torch weights (about the size of the ONNX files) once they are not needed."""
        self.base.model = None
        gc.collect()
        # glibc keeps freed heap pages; hand them back (a no-op elsewhere).
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    def check_text(self, text: str) -> None:
        self.base.check_text(text)

    def _bulk_text_session(self) -> ort.InferenceSession:
        # Opened on first use; called with `_all_cores` held.
        if self._bulk_text is None:
            self._bulk_text = open_session(self.text_model, self.image_threads)
        return self._bulk_text

    def _run_text(self, tokens: np.ndarray) -> np.ndarray:
        # The session is chosen by the whole batch's size; its length groups
        # (base.LENGTH_SPREAD) then run one after another on it.
        spreads = self.image_threads > self.text_threads
        if spreads and len(tokens) > SMALL_TEXT_BATCH:
            with self._all_cores:
                return self._run_groups(self._bulk_text_session(), tokens)
        # A lone query (`every_core_requested`) takes every core only if no
        # image batch holds them or waits for them: it never queues behind an add.
        if spreads and every_core_requested() and self._all_cores.try_acquire():
            try:
                return self._run_groups(self._bulk_text_session(), tokens)
            finally:
                self._all_cores.release()
        return self._run_groups(self._text, tokens)

    def _run_groups(self, session: ort.InferenceSession, tokens: np.ndarray) -> np.ndarray:
        return encode_in_length_groups(tokens, lambda part: session.run(None, {"text": part})[0], self.dim)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = [
            self._run_text(self.base.tokenize(texts[start : start + batch_size]).numpy())
            for start in range(0, len(texts), batch_size)
        ]
        return l2_normalise(np.concatenate(out) if out else np.zeros((0, self.dim)))

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The published cn_clip transform, stacked (the torch encoder's own)."""
        return self.base.preprocess_images(images)

    def encode_pixels(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """Encode an already preprocessed batch (N, 3, R, R)."""
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.detach().cpu().numpy()
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        with self._all_cores:
            feats = self._image.run(None, {"image": pixels})[0]
        return l2_normalise(feats)

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [
            self.encode_pixels(self.preprocess_images(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
