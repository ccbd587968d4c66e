"""The one place Milvus filter expressions are built.

Milvus Lite 3.x and the Milvus 2.3 server reject filter templates
(`filter_params`), so values cannot be bound there. Instead every value comes
from a typed `SearchFilter` whose strings were checked against a strict
charset (`check_label`) and are escaped again here; ints are formatted from
Python ints. No raw user text ever reaches an expression. Where the server
supports templates (Milvus 2.5+) `build_filter(..., templates=True)` returns
placeholders and the values separately.
"""

from __future__ import annotations

import re

from operations.errors import InvalidInput
from operations.stores.vector_base import SearchFilter

# Letters (any script, so Chinese source names and tags work), digits and a few
# separators. Notably absent: quotes, backslash, %, and expression operators.
_LABEL = re.compile(r"^[\w\-.:/ ]{1,64}$", re.UNICODE)
TAG_SEPARATOR = ","
MAX_FILTER_VALUES = 64
# An `id in [...]` list (Lite tag filters resolved in SQL, see operations.search).
MAX_ONLY_IDS = 20_000
INT64_MAX = 2**63 - 1


def check_label(value: object, what: str) -> str:
    """Validate a source or tag value; raise InvalidInput naming it otherwise."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value) or TAG_SEPARATOR in value:
        raise InvalidInput(f"invalid {what} {str(value)[:80]!r}: 1-64 letters, digits, spaces or - _ . : /")
    return value


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -INT64_MAX <= value <= INT64_MAX:
        raise InvalidInput(f"{what} must be an integer")
    return value


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def _quote(value: str) -> str:
    """A double-quoted Milvus string literal.

    check_label already excludes quotes, backslashes and control characters;
    escaping anyway keeps the builder safe if that charset is ever widened.
    (Not json.dumps: Milvus Lite rejects its \\uXXXX escapes.)
    """
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def encode_tags(tags: tuple[str, ...] | list[str]) -> str:
    """Tags as stored in SQL: ',a,b,' so that one tag matches with LIKE."""
    return TAG_SEPARATOR + TAG_SEPARATOR.join(tags) + TAG_SEPARATOR if tags else ""


def build_filter(flt: SearchFilter | None, templates: bool = False) -> tuple[str, dict]:
    """Render `flt` as (expression, params); an empty filter gives ("", {})."""
    if flt is None or flt.is_empty():
        return "", {}
    parts: list[str] = []
    params: dict = {}

    def value(name: str, literal: str, raw: object) -> str:
        if templates:
            params[name] = raw
            return "{" + name + "}"
        return literal

    for values, what in ((flt.sources, "source"), (flt.tags, "tag")):
        if len(values) > MAX_FILTER_VALUES:
            raise InvalidInput(f"at most {MAX_FILTER_VALUES} {what} values in one filter")
        for v in values:
            check_label(v, what)
    if flt.sources:
        literal = "[" + ", ".join(_quote(s) for s in flt.sources) + "]"
        parts.append("source in " + value("sources", literal, list(flt.sources)))
    if flt.tags:
        literal = "[" + ", ".join(_quote(t) for t in flt.tags) + "]"
        parts.append("array_contains_any(tags, " + value("tags", literal, list(flt.tags)) + ")")
    if flt.created_from is not None:
        v = _check_int(flt.created_from, "created_from")
        parts.append("created_at >= " + value("created_from", str(v), v))
    if flt.created_to is not None:
        v = _check_int(flt.created_to, "created_to")
        parts.append("created_at <= " + value("created_to", str(v), v))
    if flt.exclude_ids:
        ids = [_check_int(i, "image id") for i in flt.exclude_ids]
        parts.append("id not in " + value("exclude_ids", "[" + ", ".join(map(str, ids)) + "]", ids))
    if flt.only_ids is not None:
        if not flt.only_ids or len(flt.only_ids) > MAX_ONLY_IDS:
            raise InvalidInput(f"only_ids must hold 1..{MAX_ONLY_IDS} ids")
        ids = [_check_int(i, "image id") for i in flt.only_ids]
        parts.append("id in " + value("only_ids", "[" + ", ".join(map(str, ids)) + "]", ids))
    return " and ".join(parts), params


def ids_filter(ids: list[int]) -> str:
    """`id in [...]` from Python ints only."""
    return "id in [" + ", ".join(str(_check_int(int(i), "image id")) for i in ids) + "]"


def decode_tags(stored: str) -> tuple[str, ...]:
    """Inverse of `encode_tags`."""
    return tuple(t for t in (stored or "").split(TAG_SEPARATOR) if t)
