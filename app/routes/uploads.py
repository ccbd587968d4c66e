"""Reading multipart uploads within the byte limit."""

from __future__ import annotations

from fastapi import UploadFile

from operations.errors import PayloadTooLarge

CHUNK = 1024 * 1024


def read_upload(file: UploadFile, limit: int) -> bytes:
    """The upload's bytes; 413 as soon as it passes `limit` (never reads past it)."""
    if file.size is not None and file.size > limit:
        raise PayloadTooLarge(f"{file.filename or 'upload'} is {file.size} bytes; the limit is {limit}")
    parts, seen = [], 0
    while chunk := file.file.read(min(CHUNK, limit + 1 - seen)):
        seen += len(chunk)
        if seen > limit:
            raise PayloadTooLarge(f"{file.filename or 'upload'} is over the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


def split_list(value: str | None) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b'); values are validated later by the filter builder."""
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())
