"""The one rule for integers at the edge, shared by the API, the operations and the stores.

Ids are int64 in both stores (Milvus INT64 primary key, SQL BIGINT), and image
ids are not negative (Chinese-CLIP's ids are not; 0 is kept as 0, see the
SQL pool's sql_mode). Timestamps are unix seconds up to the
end of year 9999. A value outside these bounds is the caller's mistake: it is
refused as input (422) before any store sees it, never reported as a store
being unavailable.
"""

from __future__ import annotations

from collections.abc import Iterable

from operations.errors import InvalidInput

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MIN_IMAGE_ID, MAX_IMAGE_ID = 0, INT64_MAX
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
# A scan finds at most 16,384 hits per description and takes 50 descriptions.
MAX_SCAN_OFFSET = 1_000_000
# A duplicate listing's page (GET /img/duplicates/{collection}): groups per page and members
# shown per group. A page costs one SQL query per group, and a group of thousands (a library
# of near-identical product shots) must not make one response unbounded.
MAX_DUPLICATE_GROUPS_PAGE = 100
MAX_GROUP_MEMBERS = 1000


def check_image_ids(ids: Iterable[object], what: str = "image id") -> list[int]:
    """`ids` as ints, or InvalidInput naming the first one outside 0..int64 max."""
    return _check(ids, MIN_IMAGE_ID, MAX_IMAGE_ID, what)


def check_int64(ids: Iterable[object], what: str = "id") -> list[int]:
    """A store's own guard: `ids` as ints within int64, else InvalidInput (never a driver error)."""
    return _check(ids, INT64_MIN, INT64_MAX, what)


def _check(ids: Iterable[object], low: int, high: int, what: str) -> list[int]:
    out = []
    for value in ids:
        # numpy integers are ints to a store; bools and floats are not ids.
        ok = hasattr(value, "__index__") and not isinstance(value, bool)
        as_int = int(value) if ok else None  # type: ignore[call-overload]  # ok: it has __index__
        if as_int is None or not low <= as_int <= high:
            raise InvalidInput(f"{what} {str(value)[:40]} is outside {low}..{high}")
        out.append(as_int)
    return out


def check_duplicates_page(after: int, limit: int, max_members: int) -> None:
    """A duplicate listing's cursor and sizes, or InvalidInput naming the one out of range."""
    if not 0 <= after <= INT64_MAX:
        raise InvalidInput(f"after is a group number in 0..{INT64_MAX}")
    if not 1 <= limit <= MAX_DUPLICATE_GROUPS_PAGE:
        raise InvalidInput(f"limit must be in 1..{MAX_DUPLICATE_GROUPS_PAGE}")
    if not 1 <= max_members <= MAX_GROUP_MEMBERS:
        raise InvalidInput(f"max_members must be in 1..{MAX_GROUP_MEMBERS}")
