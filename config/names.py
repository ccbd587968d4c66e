"""The rule for names that reach SQL or Milvus as identifiers (collections, tables).

Identifiers cannot be bound as parameters, so every table or collection name is checked against
this one strict pattern before it is used anywhere. It lives here, at the bottom of the layers,
because the settings check DEFAULT_COLLECTION with it at start-up; `operations.names` raises the
service's error for it.
"""

from __future__ import annotations

import re

# 56 rather than 64 characters so that a prefixed SQL table name
# ("img_" + collection) still fits MySQL's 64-character identifier limit.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,55}$")


def name_problem(name: object, kind: str = "collection") -> str | None:
    """None when `name` is a safe identifier, else the message saying why it is refused."""
    if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
        return None
    return (
        f"invalid {kind} name {name!r}: use letters, digits and _, "
        "starting with a letter or _, at most 56 characters"
    )
