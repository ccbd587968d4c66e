"""Validation of the values that reach SQL or Milvus: identifiers and labels.

Identifiers (collection and table names) follow `config.names`. Labels (an image's source and
tags) are stored as strings and reach Milvus filter expressions, which cannot bind values on
the servers we support: they are held to a strict charset here, and escaped again by the
filter builder.
"""

from __future__ import annotations

import re

from config.names import name_problem
from operations.errors import BadRequest, InvalidInput

# Tags are stored in SQL as one ',a,b,' string (see sql_image_store), so a label has no comma.
TAG_SEPARATOR = ","
# Letters (any script, so Chinese source names and tags work), digits and a few
# separators. Notably absent: quotes, backslash, %, the separator and expression operators.
_LABEL = re.compile(r"^[\w\-.:/ ]{1,64}$", re.UNICODE)


def validate_name(name: object, kind: str = "collection") -> str:
    """Return `name` unchanged if it is a safe identifier, else raise BadRequest."""
    if isinstance(name, str) and name_problem(name, kind) is None:
        return name
    raise BadRequest(str(name_problem(name, kind)), name=str(name)[:80])


def check_label(value: object, what: str) -> str:
    """Validate a source or tag value; raise InvalidInput naming it otherwise."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value) or TAG_SEPARATOR in value:
        raise InvalidInput(f"invalid {what} {str(value)[:80]!r}: 1-64 letters, digits, spaces or - _ . : /")
    return value
