"""Chinese-CLIP's LMDB layout: build it from tsv/jsonl, read images back.

Byte-compatible with cn_clip's `preprocess/build_lmdb_dataset.py`:

- `lmdb/${split}/imgs`: key `str(image_id)` (UTF-8) -> the base64 string as
  found in the tsv (UTF-8 bytes); key `num_images` -> the count, decimal.
- `lmdb/${split}/pairs`: key `"0".."n-1"` -> `pickle.dumps((image_id,
  text_id, text))` (default protocol), one entry per (text, image) pair in
  file order; key `num_samples` -> the count, decimal.

Where we differ, on purpose: bad lines are reported and skipped instead of
stopping the build; a duplicate image id keeps its first image (cn_clip would
overwrite it yet count it twice, leaving `num_images` larger than the number
of images, which breaks its own eval loader); an id written "007" gets the
canonical key "7"; and each database is built in a temporary directory and
swapped in at the end, so an interrupted build never leaves a half-written
LMDB under the final name and a rebuild never keeps stale keys.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import lmdb

from datasets.formats import (
    BadRecord,
    ImageRecord,
    PathLike,
    TextRecord,
    dataset_paths,
    decode_b64_standard,
    iter_image_tsv,
    iter_texts,
    parse_image_id,
)

MAP_SIZE = 1024**4  # as cn_clip; sparse, so it costs no disk
_COMMIT_EVERY = 1000


@dataclass
class LmdbBuildReport:
    split: str
    lmdb_dir: Path
    num_images: int = 0
    num_samples: int = 0
    bad_images: list[BadRecord] = field(default_factory=list)
    bad_texts: list[BadRecord] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "split": self.split,
            "lmdb_dir": str(self.lmdb_dir),
            "num_images": self.num_images,
            "num_samples": self.num_samples,
            "bad_images": [vars_of(b) for b in self.bad_images],
            "bad_texts": [vars_of(b) for b in self.bad_texts],
        }


def vars_of(bad: BadRecord) -> dict:
    return {"line_no": bad.line_no, "reason": bad.reason, "record_id": bad.record_id}


def _swap_in(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _fresh(path: Path) -> Path:
    tmp = path.with_name(path.name + ".building")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def build_lmdb_images(imgs_tsv: PathLike, out_dir: PathLike) -> tuple[int, list[BadRecord]]:
    """Write the `imgs` LMDB at `out_dir` from a tsv; return (num_images, bad lines)."""
    out_dir = Path(out_dir)
    tmp = _fresh(out_dir)
    bad: list[BadRecord] = []
    n = 0
    env = lmdb.open(str(tmp), map_size=MAP_SIZE)
    try:
        txn = env.begin(write=True)
        for rec in iter_image_tsv(imgs_tsv):
            if isinstance(rec, BadRecord):
                bad.append(rec)
                continue
            if not txn.put(str(rec.image_id).encode("utf-8"), rec.b64.encode("utf-8"), overwrite=False):
                bad.append(
                    BadRecord(rec.line_no, f"duplicate image_id {rec.image_id} (first kept)", rec.image_id)
                )
                continue
            n += 1
            if n % _COMMIT_EVERY == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(b"num_images", str(n).encode("utf-8"))
        txn.commit()
    finally:
        env.close()
    _swap_in(tmp, out_dir)
    return n, bad


def build_lmdb_pairs(texts_jsonl: PathLike, out_dir: PathLike) -> tuple[int, list[BadRecord]]:
    """Write the `pairs` LMDB at `out_dir` from a texts jsonl; return (num_samples, bad lines)."""
    out_dir = Path(out_dir)
    tmp = _fresh(out_dir)
    bad: list[BadRecord] = []
    n = 0
    env = lmdb.open(str(tmp), map_size=MAP_SIZE)
    try:
        txn = env.begin(write=True)
        for rec in iter_texts(texts_jsonl):
            if isinstance(rec, BadRecord):
                bad.append(rec)
                continue
            for image_id in rec.image_ids:
                txn.put(str(n).encode("utf-8"), pickle.dumps((image_id, rec.text_id, rec.text)))
                n += 1
                if n % (5 * _COMMIT_EVERY) == 0:
                    txn.commit()
                    txn = env.begin(write=True)
        txn.put(b"num_samples", str(n).encode("utf-8"))
        txn.commit()
    finally:
        env.close()
    _swap_in(tmp, out_dir)
    return n, bad


def build_lmdb(dataset_dir: PathLike, split: str, lmdb_dir: PathLike | None = None) -> LmdbBuildReport:
    """Build `lmdb/${split}/{imgs,pairs}` from `${split}_imgs.tsv` and `${split}_texts.jsonl`.

    `lmdb_dir` defaults to `<dataset_dir>/lmdb`, as in cn_clip.
    """
    paths = dataset_paths(dataset_dir, split)
    split_dir = Path(lmdb_dir) / split if lmdb_dir is not None else paths.lmdb_split
    split_dir.mkdir(parents=True, exist_ok=True)
    report = LmdbBuildReport(split, split_dir)
    report.num_samples, report.bad_texts = build_lmdb_pairs(paths.texts_jsonl, split_dir / "pairs")
    report.num_images, report.bad_images = build_lmdb_images(paths.imgs_tsv, split_dir / "imgs")
    return report


def _imgs_dir(lmdb_dir: PathLike) -> Path:
    """Accept the `imgs` environment itself or the split directory holding it."""
    p = Path(lmdb_dir)
    if (p / "data.mdb").is_file():
        return p
    if (p / "imgs" / "data.mdb").is_file():
        return p / "imgs"
    raise FileNotFoundError(f"no LMDB image database at {p}")


class LmdbImages:
    """Read-only access to an `imgs` LMDB; use as a context manager."""

    def __init__(self, lmdb_dir: PathLike) -> None:
        self.path = _imgs_dir(lmdb_dir)
        self._env = lmdb.open(
            str(self.path),
            readonly=True,
            create=False,
            lock=False,
            readahead=False,
            meminit=False,
            max_readers=256,
        )

    def __len__(self) -> int:
        with self._env.begin() as txn:
            raw = txn.get(b"num_images")
        return int(raw) if raw is not None else self._env.stat()["entries"]

    def _record(self, ordinal: int, key: bytes, value: bytes) -> ImageRecord | BadRecord:
        try:
            image_id = parse_image_id(key)
        except ValueError as exc:
            return BadRecord(ordinal, str(exc))
        try:
            data, standard = decode_b64_standard(value)
            b64 = standard.decode("ascii")
        except (UnicodeDecodeError, ValueError) as exc:
            return BadRecord(ordinal, str(exc), image_id)
        return ImageRecord(ordinal, image_id, b64, data)

    def __iter__(self) -> Iterator[ImageRecord | BadRecord]:
        """Images in key order (as cn_clip's eval loader sees them); line_no = 1-based ordinal."""
        with self._env.begin() as txn:
            ordinal = 0
            for key, value in txn.cursor():
                if key == b"num_images":
                    continue
                ordinal += 1
                yield self._record(ordinal, key, value)

    def get(self, image_id: int) -> ImageRecord | BadRecord | None:
        with self._env.begin() as txn:
            value = txn.get(str(int(image_id)).encode("utf-8"))
        if value is None:
            return None
        return self._record(0, str(int(image_id)).encode(), value)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_lmdb_images(lmdb_dir: PathLike) -> Iterator[ImageRecord | BadRecord]:
    """Stream the images of an `imgs` LMDB (or a split dir holding `imgs`)."""
    with LmdbImages(lmdb_dir) as images:
        yield from images


def get_lmdb_image(lmdb_dir: PathLike, image_id: int) -> ImageRecord | BadRecord | None:
    """One image by id (opens the LMDB; for many lookups use `LmdbImages`)."""
    with LmdbImages(lmdb_dir) as images:
        return images.get(image_id)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Defence in depth: a pair is (int, int, str), which needs no global at all."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LMDB pair")


def iter_lmdb_pairs(
    lmdb_dir: PathLike, *, trusted: bool = False
) -> Iterator[tuple[int, int, str] | BadRecord]:
    """Stream (image_id, text_id, text) from a `pairs` LMDB, in index order.

    WARNING: the values are pickles, and unpickling data from an untrusted
    source can run arbitrary code. Only pass `trusted=True` for an LMDB you
    built yourself or got from a source you trust. As a second line of
    defence the unpickler refuses every global (a genuine pair needs none),
    but do not rely on that alone. Prefer the texts jsonl, which is plain data.
    """
    if not trusted:
        raise PermissionError("LMDB pairs are pickles: pass trusted=True only for an LMDB you trust")
    p = Path(lmdb_dir)
    if not (p / "data.mdb").is_file():
        p = p / "pairs"
    env = lmdb.open(str(p), readonly=True, create=False, lock=False, readahead=False, meminit=False)
    try:
        with env.begin() as txn:
            raw = txn.get(b"num_samples")
            if raw is None:
                raise FileNotFoundError(f"{p} has no num_samples key: not a pairs LMDB")
            for i in range(int(raw)):
                value = txn.get(str(i).encode("utf-8"))
                if value is None:
                    yield BadRecord(i + 1, f"pair {i} missing")
                    continue
                try:
                    pair = _NoGlobalsUnpickler(io.BytesIO(value)).load()
                except Exception as exc:  # noqa: BLE001 (a corrupt pickle raises anything; one bad record)
                    yield BadRecord(i + 1, f"bad pickle: {exc}")
                    continue
                if (
                    not isinstance(pair, tuple)
                    or len(pair) != 3
                    or not isinstance(pair[0], int)
                    or not isinstance(pair[1], int)
                    or not isinstance(pair[2], str)
                ):
                    yield BadRecord(i + 1, "pair is not (image_id, text_id, text)")
                    continue
                yield pair
    finally:
        env.close()


__all__ = [
    "LmdbBuildReport",
    "LmdbImages",
    "TextRecord",
    "build_lmdb",
    "build_lmdb_images",
    "build_lmdb_pairs",
    "get_lmdb_image",
    "iter_lmdb_images",
    "iter_lmdb_pairs",
]
