"""Batched feature extraction, as cn_clip's `eval/extract_features.py` does it.

Images come from an `imgs` LMDB (cn_clip's eval input) or straight from a
`${split}_imgs.tsv`; they are decoded and preprocessed in a bounded thread
pool a few batches ahead while the model encodes the current batch, so the
CPU-bound decode overlaps the forward pass. Texts get cn_clip's eval text
normalisation (`lower()`, curly quotes to straight) before tokenising, as
its `EvalTxtDataset` does. Features are L2-normalised float32 and written in
Chinese-CLIP's jsonl format. A record that cannot be read or decoded is
reported with its line number (LMDB: ordinal) and skipped.
"""

from __future__ import annotations

import io
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from datasets.formats import (
    BadRecord,
    FeatureWriter,
    ImageRecord,
    PathLike,
    TextRecord,
    iter_image_tsv,
    iter_texts,
)

log = logging.getLogger(__name__)


class PixelEncoder(Protocol):
    """What extraction needs of the encoder (ClipEncoder provides it)."""

    dim: int

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor: ...
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray: ...
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


@dataclass
class ExtractReport:
    output: str
    written: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "output": self.output,
            "written": self.written,
            "bad": len(self.bad),
            "bad_examples": [
                {"line_no": b.line_no, "reason": b.reason, "record_id": b.record_id} for b in self.bad[:10]
            ],
            "seconds": round(self.seconds, 3),
            "per_second": round(self.written / self.seconds, 2) if self.seconds else None,
        }


def cn_clip_text_preprocess(text: str) -> str:
    """cn_clip eval's `_preprocess_text`: lower-case, curly double quotes to '"'."""
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


def iter_image_source(source: PathLike) -> Iterator[ImageRecord | BadRecord]:
    """Images of an LMDB (a directory: `imgs` env or split dir) or of a tsv file."""
    p = Path(source)
    if p.is_dir():
        from datasets.lmdb_io import iter_lmdb_images

        return iter_lmdb_images(p)
    if p.is_file():
        return iter_image_tsv(p)
    raise FileNotFoundError(f"image source not found: {p}")


def decode_image(data: bytes) -> Image.Image:
    """Open and fully decode image bytes (so a truncated file fails here, not later)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _prepare(
    encoder: PixelEncoder, batch: list[ImageRecord]
) -> tuple[list[int], torch.Tensor | None, list[BadRecord]]:
    decoded: list[tuple[ImageRecord, Image.Image]] = []
    bad: list[BadRecord] = []
    for rec in batch:
        try:
            decoded.append((rec, decode_image(rec.data)))
        except Exception as exc:  # noqa: BLE001 (PIL raises many types; one bad record)
            bad.append(BadRecord(rec.line_no, f"cannot decode image: {exc}", rec.image_id))
    if not decoded:
        return [], None, bad
    try:
        return [r.image_id for r, _ in decoded], encoder.preprocess_images([im for _, im in decoded]), bad
    except Exception:  # noqa: BLE001, S110 (an odd image can fail the transform: find which, below)
        pass
    ids, tensors = [], []
    for rec, image in decoded:
        try:
            tensors.append(encoder.preprocess_images([image]))
            ids.append(rec.image_id)
        except Exception as exc:  # noqa: BLE001
            bad.append(BadRecord(rec.line_no, f"cannot preprocess image: {exc}", rec.image_id))
    return ids, (torch.cat(tensors) if tensors else None), bad


def _batches(
    records: Iterable[ImageRecord | BadRecord], size: int, bad: list[BadRecord]
) -> Iterator[list[ImageRecord]]:
    batch: list[ImageRecord] = []
    for rec in records:
        if isinstance(rec, BadRecord):
            bad.append(rec)
            continue
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def iter_image_features(
    encoder: PixelEncoder,
    records: Iterable[ImageRecord | BadRecord],
    batch_size: int = 64,
    workers: int = 2,
    prefetch: int | None = None,
    bad: list[BadRecord] | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield (image ids, features) per batch, decoding ahead in a thread pool.

    At most `prefetch` (default workers + 1) batches are decoded ahead, which
    bounds memory. Bad records are appended to `bad`.
    """
    bad = bad if bad is not None else []
    prefetch = prefetch or workers + 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[Future] = deque()
        batches = _batches(records, batch_size, bad)
        exhausted = False
        while True:
            while not exhausted and len(pending) < prefetch:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                else:
                    pending.append(pool.submit(_prepare, encoder, batch))
            if not pending:
                break
            ids, pixels, batch_bad = pending.popleft().result()
            bad.extend(batch_bad)
            if pixels is not None:
                yield ids, encoder.encode_pixels(pixels)


def extract_image_features(
    encoder: PixelEncoder,
    source: PathLike,
    output: PathLike,
    batch_size: int = 64,
    workers: int = 2,
    progress: bool = True,
) -> ExtractReport:
    """Write `{"image_id", "feature"}` lines for every readable image of `source`."""
    report = ExtractReport(str(output))
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="img", desc="image features")
    with FeatureWriter(output, "image_id") as writer:
        for ids, feats in iter_image_features(
            encoder, iter_image_source(source), batch_size, workers, bad=report.bad
        ):
            writer.write(ids, feats)
            if bar is not None:
                bar.update(len(ids))
        report.written = writer.count
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - start
    for b in report.bad[:20]:
        log.warning("skipped image at line %d (id %s): %s", b.line_no, b.record_id, b.reason)
    return report


def extract_text_features(
    encoder: PixelEncoder,
    texts_jsonl: PathLike,
    output: PathLike,
    batch_size: int = 64,
    preprocess: str = "cn_clip",
    progress: bool = True,
) -> ExtractReport:
    """Write `{"text_id", "feature"}` lines for every readable text of `texts_jsonl`.

    preprocess "cn_clip" applies cn_clip eval's text normalisation (the
    published numbers use it); "none" encodes the text exactly as the service
    encodes a query.
    """
    if preprocess not in ("cn_clip", "none"):
        raise ValueError("preprocess must be 'cn_clip' or 'none'")
    report = ExtractReport(str(output))
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="text", desc="text features")

    def flush(batch: list[TextRecord]) -> None:
        texts = [cn_clip_text_preprocess(r.text) if preprocess == "cn_clip" else r.text for r in batch]
        writer.write([r.text_id for r in batch], encoder.encode_texts(texts, batch_size=batch_size))
        if bar is not None:
            bar.update(len(batch))

    with FeatureWriter(output, "text_id") as writer:
        batch: list[TextRecord] = []
        for rec in iter_texts(texts_jsonl):
            if isinstance(rec, BadRecord):
                report.bad.append(rec)
                continue
            batch.append(rec)
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        report.written = writer.count
    if bar is not None:
        bar.close()
    report.seconds = time.perf_counter() - start
    return report
