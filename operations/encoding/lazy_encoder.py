"""An encoder that knows its model at once and reads the weights on its first encode.

`model_files` answers name, dim and file locations without torch; `clip_encoder` (torch,
cn_clip) is imported only when something is encoded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from operations.encoding.model_files import CONTEXT_LENGTH, ModelSpec, locate_model

if TYPE_CHECKING:
    from operations.encoding.clip_encoder import ClipEncoder


class LazyClipEncoder:
    """A `ClipEncoder` whose weights are read on the first encode.

    Name and dim come from the architecture, and a missing checkpoint fails at
    once as with the eager encoder. For the command line: a load of
    precomputed features never encodes, so it never pays the model's memory
    (RN50: peak RSS 1.2 GB with the model vs 0.3 GB without).
    """

    def __init__(self, spec: ModelSpec) -> None:
        _, _, info = locate_model(spec)
        self.spec = spec
        self.model_name = spec.name
        self.dim = int(info["embed_dim"])
        self.context_length = CONTEXT_LENGTH
        self._encoder: ClipEncoder | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    @property
    def text_int8(self) -> bool:
        # Read without loading the model (/readyz asks): what the settings ask
        # until loaded, then what the encoder did (int8 is CPU only).
        return self._encoder.text_int8 if self._encoder is not None else bool(self.spec.text_int8)

    @property
    def backend(self) -> str:
        # Read without loading the model: what the settings ask until loaded.
        return self._encoder.backend if self._encoder is not None else self.spec.backend

    def _get(self) -> ClipEncoder:
        with self._lock:
            if self._encoder is None:
                # torch and the backend choice (ENCODER_BACKEND): only now
                from operations.encoding.backends import load_encoder

                self._encoder = load_encoder(self.spec)
            return self._encoder

    def check_text(self, text: str) -> None:
        self._get().check_text(text)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._get().encode_texts(texts)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._get().encode_images(images)

    def __getattr__(self, name: str):
        # Everything else (preprocess, encode_pixels, ...) is the real encoder's.
        if name.startswith("_") or name == "spec":
            raise AttributeError(name)
        return getattr(self._get(), name)
