"""The one place Milvus filter expressions are built.

Milvus Lite 3.x and the Milvus 2.3 server reject filter templates
(`filter_params`), so values cannot be bound there. Instead every value comes
from a typed `SearchFilter`, checked by `SearchFilter.check` (strings against
the strict label charset of `operations.names`) and escaped again here; ints
are formatted from Python ints. No raw user text ever reaches an expression. Where the server
supports templates (Milvus 2.5+) `build_filter(..., templates=True)` returns
placeholders and the values separately.
"""

from __future__ import annotations

from operations.domain import SearchFilter, check_int64

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def _quote(value: str) -> str:
    """A double-quoted Milvus string literal.

    check_label already excludes quotes, backslashes and control characters;
    escaping anyway keeps the builder safe if that charset is ever widened.
    (Not json.dumps: Milvus Lite rejects its \\uXXXX escapes.)
    """
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


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

    flt.check()  # labels, ints and list sizes, before any value is rendered
    if flt.sources:
        literal = "[" + ", ".join(_quote(s) for s in flt.sources) + "]"
        parts.append("source in " + value("sources", literal, list(flt.sources)))
    if flt.tags:
        literal = "[" + ", ".join(_quote(t) for t in flt.tags) + "]"
        parts.append("array_contains_any(tags, " + value("tags", literal, list(flt.tags)) + ")")
    if flt.created_from is not None:
        v = check_int64(flt.created_from, "created_from")
        parts.append("created_at >= " + value("created_from", str(v), v))
    if flt.created_to is not None:
        v = check_int64(flt.created_to, "created_to")
        parts.append("created_at <= " + value("created_to", str(v), v))
    if flt.exclude_ids:
        ids = [check_int64(i, "image id") for i in flt.exclude_ids]
        parts.append("id not in " + value("exclude_ids", "[" + ", ".join(map(str, ids)) + "]", ids))
    if flt.only_ids is not None:
        ids = [check_int64(i, "image id") for i in flt.only_ids]
        parts.append("id in " + value("only_ids", "[" + ", ".join(map(str, ids)) + "]", ids))
    return " and ".join(parts), params


def ids_filter(ids: list[int]) -> str:
    """`id in [...]` from Python ints only."""
    return "id in [" + ", ".join(str(check_int64(int(i), "image id")) for i in ids) + "]"
