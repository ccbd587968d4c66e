"""Reading text in images with RapidOCR (ONNX Runtime; its Chinese models ship in the wheel).

One bounded pool per process: OCR_THREADS workers, each with its own engine
(an engine is not shared between threads), and at most OCR_QUEUE images
waiting; a caller submitting more blocks until a slot frees, so a bulk add
cannot pile up unbounded work. A failure on one image is that image's result,
never an exception that takes its batch down.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from operations import tracing
from operations.stores.sql_ocr_store import OcrLine

log = logging.getLogger(__name__)


@dataclass
class OcrOutcome:
    """The lines read from one image, or why it could not be read."""

    lines: list[OcrLine]
    error: str | None = None
    seconds: float = 0.0


def _to_lines(raw: Any) -> list[OcrLine]:
    # RapidOCR answers [[box (4 points), text, confidence], ...] or None when it finds no text.
    return [
        OcrLine(str(text), tuple((float(x), float(y)) for x, y in box), round(float(conf), 4))
        for box, text, conf in (raw or [])
    ]


class OcrEngine:
    """A bounded pool of RapidOCR engines; `read` / `submit` take PIL images."""

    def __init__(self, threads: int = 1, queue: int = 64, onnx_threads: int = 1) -> None:
        self.threads = threads
        self.onnx_threads = onnx_threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ocr")
        self._slots = threading.BoundedSemaphore(threads + queue)
        self._local = threading.local()

    def _engine(self) -> Any:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            from rapidocr_onnxruntime import RapidOCR  # loaded on first use: models take a second

            engine = RapidOCR(intra_op_num_threads=self.onnx_threads, inter_op_num_threads=1)
            self._local.engine = engine
        return engine

    def _read(self, image: Image.Image) -> OcrOutcome:
        import time

        started = time.perf_counter()
        try:
            pixels = np.asarray(image.convert("RGB"))[:, :, ::-1]  # RapidOCR works in BGR like OpenCV
            raw, _ = self._engine()(np.ascontiguousarray(pixels))
            return OcrOutcome(_to_lines(raw), None, time.perf_counter() - started)
        except Exception as exc:  # one unreadable image is reported, the rest go on
            log.warning("OCR failed on an image: %s", exc)
            return OcrOutcome(
                [], f"OCR failed: {type(exc).__name__}: {exc}"[:500], time.perf_counter() - started
            )
        finally:
            self._slots.release()

    def submit(self, image: Image.Image) -> Future:
        """Queue one image (blocks while the queue is full); the future gives an OcrOutcome."""
        self._slots.acquire()
        try:
            return self._pool.submit(tracing.carry(self._read), image)
        except BaseException:
            self._slots.release()
            raise

    def read(self, image: Image.Image) -> OcrOutcome:
        """Read one image in the pool and wait for it."""
        return self.submit(image).result()

    def read_many(self, images: list[Image.Image]) -> list[OcrOutcome]:
        """Read several images on all the pool's workers; results in input order."""
        return [f.result() for f in [self.submit(im) for im in images]]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
