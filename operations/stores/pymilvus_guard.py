"""Import pymilvus without it tripping over our MILVUS_URI.

pymilvus reads MILVUS_URI when it is imported and raises if the value is not
an http(s) address. Ours may be a Milvus Lite file (the embedded default), so
the variable is hidden from pymilvus for the duration of its import only.
Import pymilvus through this module, never directly.

pymilvus also logs an ERROR with a traceback for every failed call, and its
retries at INFO/WARNING: during an outage, lines by the thousand. Its call
wrapper's logger is therefore quieted; each failure still reaches the caller
as an exception, and the stores log an outage once when it starts and once
when it ends (operations/stores/outage.py).
"""

from __future__ import annotations

import logging
import os

_uri = os.environ.get("MILVUS_URI")
_hide = _uri is not None and not _uri.startswith(("http://", "https://", "tcp://", "grpc://", "unix:"))
if _hide:
    del os.environ["MILVUS_URI"]
try:
    import pymilvus  # noqa: E402
    from pymilvus import DataType, MilvusClient  # noqa: E402
    from pymilvus.exceptions import MilvusException, ParamError  # noqa: E402
finally:
    if _hide:
        os.environ["MILVUS_URI"] = _uri  # type: ignore[assignment]  # _hide implies _uri is set

logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)

__all__ = ["pymilvus", "DataType", "MilvusClient", "MilvusException", "ParamError"]
