"""The encoder interface every operation depends on."""

from __future__ import annotations

import threading
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


class FairLock:
    """A lock granted in request order (a ticket lock).

    `threading.Lock` lets the releasing thread take it straight back, so a
    loop of image batches (a bulk add) could keep a waiting query batch out
    for many passes; here the query batch goes next.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> FairLock:
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._cond.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()
