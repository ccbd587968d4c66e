"""Validation of names that reach SQL or Milvus as identifiers.

Identifiers cannot be bound as parameters, so every table or collection name
is checked against one strict pattern before it is used anywhere.
"""

from __future__ import annotations

import re

from operations.errors import BadRequest

# 56 rather than 64 characters so that a prefixed SQL table name
# ("img_" + collection) still fits MySQL's 64-character identifier limit.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,55}$")


def validate_name(name: object, kind: str = "collection") -> str:
    """Return `name` unchanged if it is a safe identifier, else raise BadRequest."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(
            f"invalid {kind} name {name!r}: use letters, digits and _, "
            "starting with a letter or _, at most 56 characters",
            name=str(name)[:80],
        )
    return name
