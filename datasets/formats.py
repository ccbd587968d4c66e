"""Readers and writers of Chinese-CLIP's dataset files: images tsv, texts jsonl, features, predictions.

Every reader streams: it holds one line at a time, so a tsv of millions of
images or a feature file of gigabytes costs constant memory. Readers are
tolerant: a broken line becomes a `BadRecord` (1-based line number, reason,
the id when it could be read) and reading goes on, so a loader can report
the bad records and keep the rest.

Files are read as bytes and decoded per line, so one line of invalid UTF-8
cannot stop a whole file. Blank lines are skipped silently (a trailing
newline is not an error).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self, TypeGuard

import numpy as np
import orjson
import pybase64

PathLike = str | os.PathLike

# Chinese-CLIP writes image ids as plain decimal ints; anything else (floats,
# "1e3", "+7", "0x10") is refused rather than guessed at.
_INT_RE = re.compile(rb"^-?[0-9]+$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# cn_clip decodes with base64.urlsafe_b64decode, which accepts both the
# standard and the URL-safe alphabet; accept exactly those two, strictly.
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")
_READ_BUFFER = 1 << 20
# get_many reads adjacent lines with one call, up to this many bytes.
_MAX_READ_SPAN = 8 << 20


# --------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A line (or LMDB entry) that could not be read; the rest is still read."""

    line_no: int
    reason: str
    record_id: int | None = None


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One image: `b64` as found in the file but in the standard alphabet, `data` the decoded bytes."""

    line_no: int
    image_id: int
    b64: str
    data: bytes


@dataclass(frozen=True, slots=True)
class TextRecord:
    line_no: int
    text_id: int
    text: str
    image_ids: list[int]


@dataclass(frozen=True, slots=True)
class FeatureRecord:
    """One feature line; `vector` is float32, shape (dim,)."""

    line_no: int
    id: int
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One prediction line. `scores` is our optional extra field (None if absent).

    Chinese-CLIP's evaluation reads only `text_id` and `image_ids`, so the
    extra `scores` key keeps our files valid input for its scripts.
    """

    line_no: int
    query_id: int
    ids: list[int]
    scores: list[float] | None = None


class FormatError(ValueError):
    """A file that cannot be used at all, or a bad line where no tolerance is wanted."""

    def __init__(self, message: str, line_no: int | None = None) -> None:
        super().__init__(message if line_no is None else f"line {line_no}: {message}")
        self.line_no = line_no


def is_int(value: object) -> TypeGuard[int]:
    """A JSON integer (bools are not ids) within int64."""
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


def decode_b64(b64: bytes | str) -> bytes:
    """Strictly decode standard or URL-safe base64; raise ValueError on anything else."""
    return decode_b64_standard(b64)[0]


def decode_b64_standard(b64: bytes | str) -> tuple[bytes, bytes]:
    """(decoded bytes, the same base64 in the standard alphabet), strictly.

    pybase64 (SIMD) validates and decodes 67 KB in ~7 us where the standard
    library's validating decode takes ~270 us (a regex pass, then the decode):
    it was the loader's largest cost per image. URL-safe input is translated
    once, so what is stored is always standard base64, which every decoder
    (the API's, the browser's) reads.
    """
    if isinstance(b64, str):
        b64 = b64.encode("ascii")
    if not b64:
        raise ValueError("empty base64")
    try:
        return pybase64.b64decode(b64, validate=True), b64
    except binascii.Error:
        pass
    standard = b64.translate(_URLSAFE_TO_STD)
    try:
        return pybase64.b64decode(standard, validate=True), standard
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {_b64_problem(standard) or exc}") from None


def _b64_problem(b64: bytes) -> str | None:
    """The standard library's clearer message for invalid base64 (error path only)."""
    try:
        base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        return str(exc)
    return None


def parse_image_id(raw: bytes | str) -> int:
    """Parse an image id as written in a tsv or an LMDB key; ValueError if not an int."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    raw = raw.strip()
    if not _INT_RE.match(raw):
        raise ValueError(f"image id {raw[:40].decode('utf-8', 'replace')!r} is not an integer")
    value = int(raw)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"image id {value} is outside int64")
    return value


def _lines(path: PathLike) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, stripped bytes) of every non-blank line."""
    # A 1 MB buffer: image lines are tens of KB, and with the default 8 KB each
    # line took several read calls (each a GIL hand-off to the load's other threads).
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.strip()
            if line:
                yield line_no, line


def _json_object(line_no: int, line: bytes) -> dict | BadRecord:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return BadRecord(line_no, f"not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return BadRecord(line_no, f"a JSON {type(obj).__name__}, not an object")
    return obj


# --------------------------------------------------------------------------
# ${split}_imgs.tsv
# --------------------------------------------------------------------------


def parse_image_line(line_no: int, line: bytes) -> ImageRecord | BadRecord:
    """Parse one stripped tsv line `image_id<TAB>base64`."""
    parts = line.split(b"\t")
    if len(parts) != 2:
        return BadRecord(line_no, f"expected 2 tab-separated fields, found {len(parts)}")
    try:
        image_id = parse_image_id(parts[0])
    except ValueError as exc:
        return BadRecord(line_no, str(exc))
    try:
        data, b64 = decode_b64_standard(parts[1].strip())
    except ValueError as exc:
        return BadRecord(line_no, str(exc), image_id)
    if not data:
        return BadRecord(line_no, "empty image", image_id)
    # base64 that validated is pure ASCII.
    return ImageRecord(line_no, image_id, b64.decode("ascii"), data)


def iter_image_tsv(path: PathLike) -> Iterator[ImageRecord | BadRecord]:
    """Stream `${split}_imgs.tsv`: an ImageRecord or a BadRecord per non-blank line."""
    for line_no, line in _lines(path):
        yield parse_image_line(line_no, line)


def write_image_tsv(path: PathLike, images: Iterable[tuple[int, bytes]]) -> int:
    """Write (image_id, original image bytes) pairs as `id<TAB>base64`; return the count.

    Standard base64, as Chinese-CLIP's README prepares it (its loader's
    `urlsafe_b64decode` reads the standard alphabet too).
    """
    n = 0
    with open(path, "wb") as f:
        for image_id, data in images:
            if not is_int(image_id):
                raise FormatError(f"image id {image_id!r} is not an int")
            f.write(b"%d\t%s\n" % (image_id, base64.b64encode(data)))
            n += 1
    return n


# --------------------------------------------------------------------------
# ${split}_texts.jsonl
# --------------------------------------------------------------------------


def parse_text_line(line_no: int, line: bytes) -> TextRecord | BadRecord:
    obj = _json_object(line_no, line)
    if isinstance(obj, BadRecord):
        return obj
    text_id = obj.get("text_id")
    if not is_int(text_id):
        return BadRecord(line_no, f"text_id {text_id!r} is not an int")
    text = obj.get("text")
    if not isinstance(text, str):
        return BadRecord(line_no, f"text is {type(text).__name__}, not a string", text_id)
    image_ids = obj.get("image_ids")
    if not isinstance(image_ids, list):
        return BadRecord(line_no, "image_ids is missing or not a list", text_id)
    for image_id in image_ids:
        if not is_int(image_id):
            return BadRecord(line_no, f"image id {image_id!r} is not an int", text_id)
    return TextRecord(line_no, text_id, text, image_ids)


def iter_texts(path: PathLike) -> Iterator[TextRecord | BadRecord]:
    """Stream `${split}_texts.jsonl`: a TextRecord or a BadRecord per non-blank line."""
    for line_no, line in _lines(path):
        yield parse_text_line(line_no, line)


def write_texts_jsonl(path: PathLike, texts: Iterable[TextRecord | tuple[int, str, Sequence[int]]]) -> int:
    """Write texts as `{"text_id", "text", "image_ids"}` lines (UTF-8, not escaped)."""
    n = 0
    with open(path, "wb") as f:
        for item in texts:
            image_ids: Sequence[int]
            if isinstance(item, TextRecord):
                text_id, text, image_ids = item.text_id, item.text, item.image_ids
            else:
                text_id, text, image_ids = item
            ids = [int(i) for i in image_ids]
            f.write(orjson.dumps({"text_id": int(text_id), "text": text, "image_ids": ids}))
            f.write(b"\n")
            n += 1
    return n


# --------------------------------------------------------------------------
# feature files
# --------------------------------------------------------------------------


def parse_feature_line(
    line_no: int, line: bytes, id_key: str, expected_dim: int | None = None
) -> FeatureRecord | BadRecord:
    obj = _json_object(line_no, line)
    if isinstance(obj, BadRecord):
        return obj
    record_id = obj.get(id_key)
    if not is_int(record_id):
        return BadRecord(line_no, f"{id_key} {record_id!r} is not an int")
    feature = obj.get("feature")
    if not isinstance(feature, list):
        return BadRecord(line_no, "feature is missing or not a list", record_id)
    try:
        # Python floats -> float64 -> float32 is faster than straight to float32
        # (numpy converts each float once); an overflow becomes inf, reported below.
        with np.errstate(over="ignore", invalid="ignore"):
            vector = np.asarray(feature, dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError):
        return BadRecord(line_no, "feature holds a non-number", record_id)
    if vector.ndim != 1 or vector.size == 0:
        return BadRecord(line_no, "feature is not a flat non-empty list of numbers", record_id)
    if expected_dim is not None and vector.shape[0] != expected_dim:
        return BadRecord(
            line_no, f"feature has dimension {vector.shape[0]}, expected {expected_dim}", record_id
        )
    if not np.isfinite(vector).all():
        return BadRecord(line_no, "feature contains NaN or infinity", record_id)
    return FeatureRecord(line_no, record_id, vector)


def iter_features(
    path: PathLike, id_key: str = "image_id", expected_dim: int | None = None
) -> Iterator[FeatureRecord | BadRecord]:
    """Stream a feature jsonl (`id_key` is "image_id" or "text_id")."""
    for line_no, line in _lines(path):
        yield parse_feature_line(line_no, line, id_key, expected_dim)


class FeatureWriter:
    """Appends feature rows batch by batch; use as a context manager.

    float32 values are written with their shortest round-tripping repr, so a
    file read back gives the identical float32 matrix.
    """

    def __init__(self, path: PathLike, id_key: str) -> None:
        self.id_key = id_key
        self.count = 0
        self._f: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed by close/__exit__)

    def write(self, ids: Sequence[int], matrix: np.ndarray) -> None:
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} ids but a matrix of shape {matrix.shape}")
        key = self.id_key
        self._f.write(
            b"".join(
                orjson.dumps({key: int(i), "feature": row}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                for i, row in zip(ids, matrix, strict=True)
            )
        )
        self.count += len(ids)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_features_jsonl(
    path: PathLike, id_key: str, ids: Sequence[int], matrix: np.ndarray, chunk: int = 4096
) -> int:
    """Write `{id_key: id, "feature": [...]}` lines; return the count."""
    with FeatureWriter(path, id_key) as w:
        for start in range(0, len(ids), chunk):
            w.write(ids[start : start + chunk], matrix[start : start + chunk])
        return w.count


_ID_CACHE: dict[str, re.Pattern] = {}


def _id_pattern(id_key: str) -> re.Pattern:
    if id_key not in _ID_CACHE:
        _ID_CACHE[id_key] = re.compile(rb'"' + re.escape(id_key.encode()) + rb'"\s*:\s*(-?[0-9]+)\s*[,}]')
    return _ID_CACHE[id_key]


class FeatureIndex:
    """Random access to a feature jsonl by id, without holding the features.

    One pass records each line's id, byte offset and length in three compact
    int64 arrays sorted by id (24 bytes a line: 1M features ~ 24 MB); `get`
    reads and parses just that line with `os.pread`, so it is safe to call
    from many threads. The id is found with a regex, not a JSON parse, so
    the pass costs little more than reading the file.

    A duplicate id keeps its first line; the later ones, and lines without a
    readable id, are in `bad`.
    """

    def __init__(self, path: PathLike, id_key: str = "image_id", expected_dim: int | None = None) -> None:
        self.path = Path(path)
        self.id_key = id_key
        self.expected_dim = expected_dim
        self.bad: list[BadRecord] = []
        pattern = _id_pattern(id_key)
        ids, offsets, lengths, line_nos = array("q"), array("q"), array("q"), array("q")
        offset = 0
        with open(self.path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                if raw.strip():
                    m = pattern.search(raw)
                    if m is None:
                        # Fall back to a full parse for the exact reason.
                        rec = parse_feature_line(line_no, raw.strip(), id_key, expected_dim)
                        self.bad.append(
                            rec if isinstance(rec, BadRecord) else BadRecord(line_no, f"{id_key} not found")
                        )
                    else:
                        value = int(m.group(1))
                        if _INT64_MIN <= value <= _INT64_MAX:
                            ids.append(value)
                            offsets.append(offset)
                            lengths.append(len(raw))
                            line_nos.append(line_no)
                        else:
                            self.bad.append(BadRecord(line_no, f"{id_key} {value} is outside int64"))
                offset += len(raw)
        id_arr = np.frombuffer(ids, dtype=np.int64)
        order = np.argsort(id_arr, kind="stable")
        id_arr = id_arr[order]
        keep = np.ones(len(id_arr), dtype=bool)
        if len(id_arr) > 1:
            keep[1:] = id_arr[1:] != id_arr[:-1]
        line_arr = np.frombuffer(line_nos, dtype=np.int64)[order]
        for pos in np.flatnonzero(~keep):
            self.bad.append(
                BadRecord(int(line_arr[pos]), f"duplicate {id_key} {int(id_arr[pos])}", int(id_arr[pos]))
            )
        self._ids = id_arr[keep]
        self._offsets = np.frombuffer(offsets, dtype=np.int64)[order][keep]
        self._lengths = np.frombuffer(lengths, dtype=np.int64)[order][keep]
        self._line_nos = line_arr[keep]
        self.bad.sort(key=lambda b: b.line_no)
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, record_id: int) -> bool:
        return self._position(record_id) is not None

    def ids(self) -> np.ndarray:
        """All indexed ids, ascending (int64)."""
        return self._ids

    def _position(self, record_id: int) -> int | None:
        pos = int(np.searchsorted(self._ids, record_id))
        if pos < len(self._ids) and self._ids[pos] == record_id:
            return pos
        return None

    def get(self, record_id: int) -> FeatureRecord | BadRecord | None:
        """The parsed line for `record_id`, a BadRecord if that line is broken, None if absent."""
        pos = self._position(record_id)
        if pos is None:
            return None
        raw = os.pread(self._open_fd(), int(self._lengths[pos]), int(self._offsets[pos]))
        return self._parse(pos, raw, record_id)

    def get_many(self, record_ids: Iterable[int]) -> dict[int, FeatureRecord | BadRecord]:
        """Several ids at once; absent ids are left out.

        Lines that lie next to each other in the file (the usual case: features
        written in the images' order) are read with one call per run of lines
        instead of one per line.
        """
        # An id outside int64 cannot be in the index (ids are read as int64):
        # absent, as get() would say, rather than an OverflowError.
        wanted = np.fromiter(
            (r for r in map(int, record_ids) if _INT64_MIN <= r <= _INT64_MAX), dtype=np.int64
        )
        if not len(wanted) or not len(self._ids):
            return {}
        pos = np.minimum(np.searchsorted(self._ids, wanted), len(self._ids) - 1)
        hit = self._ids[pos] == wanted
        pos, wanted = pos[hit], wanted[hit]
        order = np.argsort(self._offsets[pos], kind="stable")
        pos, wanted = pos[order], wanted[order]
        starts, lengths = self._offsets[pos], self._lengths[pos]
        fd = self._open_fd()
        out: dict[int, FeatureRecord | BadRecord] = {}
        i = 0
        while i < len(pos):
            # Extend the run while the next line starts where this one ends
            # and the run is under the span (so a run ends at most one line
            # past _MAX_READ_SPAN).
            j, end = i + 1, int(starts[i] + lengths[i])
            while j < len(pos) and starts[j] == end and end - starts[i] < _MAX_READ_SPAN:
                end += int(lengths[j])
                j += 1
            block = os.pread(fd, end - int(starts[i]), int(starts[i]))
            for k in range(i, j):
                at = int(starts[k] - starts[i])
                out[int(wanted[k])] = self._parse(
                    int(pos[k]), block[at : at + int(lengths[k])], int(wanted[k])
                )
            i = j
        return out

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("FeatureIndex is closed")
        return self._fd

    def _parse(self, pos: int, raw: bytes, record_id: int) -> FeatureRecord | BadRecord:
        rec = parse_feature_line(int(self._line_nos[pos]), raw.strip(), self.id_key, self.expected_dim)
        if isinstance(rec, FeatureRecord) and rec.id != record_id:
            return BadRecord(rec.line_no, f"{self.id_key} is ambiguous on this line", record_id)
        return rec

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


# --------------------------------------------------------------------------
# predictions
# --------------------------------------------------------------------------


def parse_prediction_line(
    line_no: int, line: bytes, query_key: str = "text_id", result_key: str = "image_ids"
) -> PredictionRecord | BadRecord:
    obj = _json_object(line_no, line)
    if isinstance(obj, BadRecord):
        return obj
    qid = obj.get(query_key)
    if not is_int(qid):
        return BadRecord(line_no, f"{query_key} {qid!r} is not an int")
    ids = obj.get(result_key)
    if not isinstance(ids, list) or not all(is_int(i) for i in ids):
        return BadRecord(line_no, f"{result_key} is missing or not a list of ints", qid)
    scores = obj.get("scores")
    if scores is not None:
        if (
            not isinstance(scores, list)
            or len(scores) != len(ids)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)
        ):
            return BadRecord(line_no, f"scores must be {len(ids)} numbers", qid)
        scores = [float(s) for s in scores]
    return PredictionRecord(line_no, qid, ids, scores)


def iter_predictions(
    path: PathLike, query_key: str = "text_id", result_key: str = "image_ids"
) -> Iterator[PredictionRecord | BadRecord]:
    """Stream a predictions jsonl (image->text files: query_key="image_id", result_key="text_ids")."""
    for line_no, line in _lines(path):
        yield parse_prediction_line(line_no, line, query_key, result_key)


def read_predictions(
    path: PathLike,
    query_key: str = "text_id",
    result_key: str = "image_ids",
    strict: bool = True,
    bad: list[BadRecord] | None = None,
) -> dict[int, PredictionRecord]:
    """query id -> PredictionRecord (a later line for the same query wins, as in cn_clip).

    strict: raise FormatError at the first bad line; otherwise skip bad lines
    (appending them to `bad` when given).
    """
    out: dict[int, PredictionRecord] = {}
    for rec in iter_predictions(path, query_key, result_key):
        if isinstance(rec, BadRecord):
            if strict:
                raise FormatError(f"{path}: {rec.reason}", rec.line_no)
            if bad is not None:
                bad.append(rec)
            continue
        out[rec.query_id] = rec
    return out


def write_predictions_jsonl(
    path: PathLike,
    predictions: Iterable[
        tuple[int, Sequence[int]] | tuple[int, Sequence[int], Sequence[float] | None] | PredictionRecord
    ]
    | Mapping[int, Sequence[int]],
    query_key: str = "text_id",
    result_key: str = "image_ids",
    with_scores: bool = True,
) -> int:
    """Write `{"text_id", "image_ids"[, "scores"]}` lines, best first; return the count.

    Items are (query_id, ids), (query_id, ids, scores) or PredictionRecords;
    a mapping query_id -> ids works too. `scores` is written when given and
    `with_scores` (cn_clip's evaluation ignores the extra key).
    """
    items: Iterable[Any] = predictions.items() if isinstance(predictions, Mapping) else predictions
    n = 0
    with open(path, "wb") as f:
        for item in items:
            ids: Sequence[int]
            scores: Sequence[float] | None
            if isinstance(item, PredictionRecord):
                qid, ids, scores = item.query_id, item.ids, item.scores
            elif len(item) == 3:
                qid, ids, scores = item
            else:
                (qid, ids), scores = item, None
            obj: dict = {query_key: int(qid), result_key: [int(i) for i in ids]}
            if with_scores and scores is not None:
                obj["scores"] = [float(s) for s in scores]
            f.write(orjson.dumps(obj) + b"\n")
            n += 1
    return n


# --------------------------------------------------------------------------
# file layout
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPaths:
    """Chinese-CLIP's file names for one split of a dataset directory."""

    dataset_dir: Path
    split: str
    imgs_tsv: Path
    texts_jsonl: Path
    img_feat: Path
    txt_feat: Path
    predictions: Path
    lmdb_imgs: Path
    lmdb_pairs: Path

    @property
    def lmdb_split(self) -> Path:
        return self.lmdb_imgs.parent


_SPLIT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def dataset_paths(dataset_dir: PathLike, split: str) -> SplitPaths:
    """Paths of `split` in `dataset_dir`, named as Chinese-CLIP names them."""
    if not _SPLIT_RE.match(split) or split in (".", ".."):
        raise ValueError(f"split name {split!r} is not a plain name")
    d = Path(dataset_dir)
    return SplitPaths(
        dataset_dir=d,
        split=split,
        imgs_tsv=d / f"{split}_imgs.tsv",
        texts_jsonl=d / f"{split}_texts.jsonl",
        img_feat=d / f"{split}_imgs.img_feat.jsonl",
        txt_feat=d / f"{split}_texts.txt_feat.jsonl",
        predictions=d / f"{split}_predictions.jsonl",
        lmdb_imgs=d / "lmdb" / split / "imgs",
        lmdb_pairs=d / "lmdb" / split / "pairs",
    )
