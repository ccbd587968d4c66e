"""The encoder interface every operation depends on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image


class Encoder(Protocol):
    """Embeds Chinese text and images into one space.

    Every returned matrix is float32, shape (n, dim), each row L2-normalised,
    so inner product equals cosine similarity.
    """

    model_name: str
    dim: int
    context_length: int

    def check_text(self, text: str) -> None:
        """Raise InvalidInput when `text` is empty or longer than the context."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Row-normalise in float32; an all-zero row stays zero instead of NaN."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms
