"""Import pymilvus without it tripping over our MILVUS_URI.

pymilvus reads MILVUS_URI when it is imported and raises if the value is not
an http(s) address. Ours may be a Milvus Lite file (the embedded default), so
the variable is hidden from pymilvus for the duration of its import only.
Import pymilvus through this module, never directly.
"""

from __future__ import annotations

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
        os.environ["MILVUS_URI"] = _uri  # type: ignore[assignment]

__all__ = ["pymilvus", "DataType", "MilvusClient", "MilvusException", "ParamError"]
