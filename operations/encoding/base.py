"""The encoder interface every operation depends on."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, Sequence
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


# A batch of texts is as wide as its longest: the padding is masked out, but its tokens are
# still multiplied through every layer, and the float32 tower already runs at the machine's
# sgemm rate (ORT's BERT fusions gain nothing), so padding is the cost left to cut
# (bench/README.md, "The float32 text tower against the machine's floor"). The encoders
# therefore run a batch as groups of texts whose token counts differ by at most LENGTH_SPREAD,
# each trimmed to its own longest: on the sweep's queries at batch 32, 20% less time a query on
# one thread and 8% on two; a wider spread pads more, a narrower one makes more, smaller passes.
LENGTH_SPREAD = 4


def length_groups(lengths: np.ndarray, spread: int = LENGTH_SPREAD) -> list[np.ndarray]:
    """Row indices grouped by token count (each group's counts within `spread`), shortest first.

    Every index appears in exactly one group; callers run each group trimmed to its own
    longest and put the results back by these indices.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or lengths[order[i]] - lengths[order[start]] > spread:
            groups.append(order[start:i])
            start = i
    return groups


def encode_in_length_groups(
    tokens: np.ndarray, run: Callable[[np.ndarray], np.ndarray], dim: int
) -> np.ndarray:
    """`run` over each length group of `tokens` (pad id 0), results in the rows' own order."""
    lengths = np.maximum((np.asarray(tokens) != 0).sum(axis=1), 1)
    out = np.zeros((len(tokens), dim), np.float32)
    for rows in length_groups(lengths):
        out[rows] = run(np.ascontiguousarray(tokens[rows][:, : int(lengths[rows].max())]))
    return out


# A short query batch normally runs on ENCODER_TEXT_THREADS (one) so that, under
# load, the encoder leaves the other cores to Milvus, SQL and HTTP. When the
# serving layer knows the query is the only search in progress, those cores are
# idle and the ONNX encoder spreads the encode over every allotted one (torch
# does not: its OpenMP threads spin, bench/README.md "Findings" 7): on 2 cores a lone
# query's encode took 0.69x its one-thread time in the service (bench/README.md,
# "Results of 2026-12-03, fifth session"). Carried as a context variable, set
# in the thread that runs the batch, so the `Encoder` protocol is unchanged.
_EVERY_CORE: contextvars.ContextVar[bool] = contextvars.ContextVar("encode_on_every_core", default=False)


@contextlib.contextmanager
def on_every_core(enabled: bool = True) -> Iterator[None]:
    """Within the block, ask the encoders to run small text batches on every allotted core."""
    token = _EVERY_CORE.set(enabled)
    try:
        yield
    finally:
        _EVERY_CORE.reset(token)


def every_core_requested() -> bool:
    """True inside `on_every_core()` (in this thread or task)."""
    return _EVERY_CORE.get()


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
        self.release()

    def try_acquire(self) -> bool:
        """Take the lock only if it is free and nobody waits for it; never blocks."""
        with self._cond:
            if self._next_ticket != self._serving:
                return False
            self._next_ticket += 1
            return True

    def release(self) -> None:
        """Hand the lock to the next ticket (after `__enter__` or a true `try_acquire`)."""
        with self._cond:
            self._serving += 1
            self._cond.notify_all()
