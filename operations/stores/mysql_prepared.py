"""Server-side prepared INSERTs over a pymysql connection (MySQL binary protocol).

Why: pymysql only speaks the text protocol, where every value is written into
the statement as a quoted literal and the server's lexer reads it back
character by character. For base64 images of tens of KB that lexing was the
largest share of mariadbd's CPU, even with character_set_client=binary
(perf; bench/README.md, "Results of 2026-12-01").
With COM_STMT_EXECUTE the values travel as length-prefixed bytes beside the
statement and are never lexed; nor does the client escape and format them.

Only what bulk inserts need: INT and str/bytes/None parameters, statements
without result sets. Values are bound parameters in the strictest sense: the
statement text (constant, from this package) and the values never meet.

Protocol: https://mariadb.com/kb/en/com_stmt_prepare/ and com_stmt_execute/
(the same in MySQL 5.7/8). pymysql does not ask for CLIENT_DEPRECATE_EOF, so
the column and parameter definitions end with EOF packets.
"""

from __future__ import annotations

import operator
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pymysql.constants import CLIENT

COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_CLOSE = 0x19

_TYPE_LONGLONG = b"\x08\x00"
_TYPE_NULL = b"\x06\x00"
# Both length-encoded. The server reads STRING in character_set_client (text:
# utf8mb4, as with the text protocol) and BLOB as bytes. Into a binary column
# (LONGBLOB) neither is converted.
_TYPE_STRING = b"\xfe\x00"
_TYPE_BLOB = b"\xfc\x00"
_CURSOR_NONE_ONE_ITERATION = struct.pack("<BI", 0, 1)

# Statements kept per connection, by statement text, least recently used
# closed first. Each table needs at most 5 (groups of 16, 8, 4, 2, 1 rows), so
# a connection holds few whatever the number of collections; the server's
# max_prepared_stmt_count (16,382 by default) is shared with every client.
_CACHE_ATTR = "_imgsearch_prepared"
_CACHE_SIZE = 20
_GROUP_SIZES = (16, 8, 4, 2, 1)
# Per parameter in COM_STMT_EXECUTE besides its bytes: type (2), length
# prefix (up to 9) or an int64 (8).
_PARAM_OVERHEAD = 11


class Prepared:
    """One prepared statement on one connection."""

    def __init__(self, conn: Any, statement: str) -> None:
        conn._execute_command(COM_STMT_PREPARE, statement)
        head = conn._read_packet()  # an error packet raises here, as for a query
        data = head.get_all_data()
        if not data or data[0] != 0:
            raise ValueError("unexpected reply to COM_STMT_PREPARE")
        # 0x00, statement id (4), columns (2), parameters (2), filler, warnings
        self.id, columns, self.n_params = struct.unpack_from("<IHH", data, 1)
        # Each list of definitions ends with an EOF packet, unless the client
        # negotiated CLIENT_DEPRECATE_EOF (pymysql 2.2 does not ask for it).
        with_eof = not (getattr(conn, "client_flag", 0) & CLIENT.DEPRECATE_EOF)
        for count in (self.n_params, columns):
            if count:
                for _ in range(count):
                    conn._read_packet()
                if with_eof:
                    conn._read_packet()
        self._conn = conn
        if self.n_params == 0:
            self.close()
            raise ValueError("a statement without parameters needs no preparing")

    def close(self) -> None:
        # COM_STMT_CLOSE has no reply.
        self._conn._execute_command(COM_STMT_CLOSE, struct.pack("<I", self.id))

    def execute(self, params: Sequence[Any]) -> int:
        """Run with `params` (len == n_params); the affected row count."""
        if len(params) != self.n_params:
            raise ValueError(f"statement takes {self.n_params} parameters, got {len(params)}")
        null_bitmap = bytearray((self.n_params + 7) // 8)
        types, values = [], []
        for i, value in enumerate(params):
            if value is None:
                null_bitmap[i // 8] |= 1 << (i % 8)
                types.append(_TYPE_NULL)
            elif hasattr(value, "__index__"):
                number = operator.index(value)  # numpy integers too, as with the text protocol
                try:
                    values.append(struct.pack("<q", number))
                except struct.error:
                    raise ValueError(f"parameter {i}: {number} does not fit a 64-bit integer") from None
                types.append(_TYPE_LONGLONG)
            elif isinstance(value, str):
                raw = value.encode("utf-8")
                types.append(_TYPE_STRING)
                values.append(_lenenc(len(raw)))
                values.append(raw)
            elif isinstance(value, bytes):
                types.append(_TYPE_BLOB)
                values.append(_lenenc(len(value)))
                values.append(value)
            else:
                raise TypeError(
                    f"parameter {i}: {type(value).__name__} is not supported (int, str, bytes, None)"
                )
        payload = b"".join(
            (
                struct.pack("<I", self.id),
                _CURSOR_NONE_ONE_ITERATION,
                bytes(null_bitmap),
                b"\x01",
                *types,
                *values,
            )
        )
        conn = self._conn
        conn._execute_command(COM_STMT_EXECUTE, payload)
        return int(conn._read_ok_packet().affected_rows)


def prepared(conn: Any, statement: str) -> Prepared:
    """The connection's prepared `statement`, preparing it on first use."""
    cache: OrderedDict[str, Prepared] | None = getattr(conn, _CACHE_ATTR, None)
    if cache is None:
        cache = OrderedDict()
        setattr(conn, _CACHE_ATTR, cache)
    found = cache.get(statement)
    if found is not None:
        cache.move_to_end(statement)
        return found
    while len(cache) >= _CACHE_SIZE:
        _, oldest = cache.popitem(last=False)
        oldest.close()
    found = cache[statement] = Prepared(conn, statement)
    return found


def insert_rows(
    conn: Any,
    table_sql: str,
    columns: str,
    rows: Sequence[Sequence[Any]],
    max_bytes: int = 4 << 20,
    binary: Sequence[int] = (),
) -> int:
    """`INSERT <table_sql> (<columns>) VALUES (...), (...)` of `rows` through
    prepared multi-row statements of 16, 8, 4, 2 or 1 rows, each execution
    carrying at most about `max_bytes` (it must stay under the server's
    max_allowed_packet; a single larger row goes alone). Returns the affected
    row count.

    `table_sql` is constant text with a validated table name, e.g.
    "IGNORE INTO `img_x`"; values only ever travel as parameters.
    `binary`: positions of str values to send as bytes (BLOB) rather than
    text. The server then skips checking them as utf8mb4 (for 67 KB base64
    images that check was ~half of mariadbd's CPU in a perf profile).
    """
    if not rows:
        return 0
    if not rows[0]:
        raise ValueError("rows have no columns")
    if binary:
        rows = [_with_bytes(row, binary) for row in rows]
    row_marks = "(" + ", ".join("?" * len(rows[0])) + ")"
    affected, size = 0, 0
    group: list[Sequence[Any]] = []
    for row in rows:
        row_size = _wire_size(row)
        if group and (len(group) == _GROUP_SIZES[0] or size + row_size > max_bytes):
            affected += _run_group(conn, table_sql, columns, row_marks, group)
            group, size = [], 0
        group.append(row)
        size += row_size
    return affected + _run_group(conn, table_sql, columns, row_marks, group)


def _wire_size(row: Sequence[Any]) -> int:
    size = _PARAM_OVERHEAD * len(row)
    for v in row:
        if isinstance(v, bytes):
            size += len(v)
        elif isinstance(v, str):
            size += len(v) if v.isascii() else len(v.encode("utf-8"))
    return size


def _run_group(conn: Any, table_sql: str, columns: str, row_marks: str, group: list) -> int:
    """One group as statements of the fixed sizes only (16 = 8+4+2+1 at most
    four executions for a remainder), so few shapes are ever prepared."""
    affected, start = 0, 0
    for size in _GROUP_SIZES:
        while len(group) - start >= size:
            affected += _run(conn, table_sql, columns, row_marks, group[start : start + size])
            start += size
    return affected


def _run(conn: Any, table_sql: str, columns: str, row_marks: str, group: list) -> int:
    statement = f"INSERT {table_sql} ({columns}) VALUES " + ", ".join([row_marks] * len(group))
    return prepared(conn, statement).execute([v for row in group for v in row])


def _with_bytes(row: Sequence[Any], positions: Sequence[int]) -> tuple:
    out = list(row)
    for i in positions:
        if isinstance(out[i], str):
            out[i] = out[i].encode("utf-8")
    return tuple(out)


def _lenenc(n: int) -> bytes:
    if n < 251:
        return bytes((n,))
    if n < 1 << 16:
        return b"\xfc" + struct.pack("<H", n)
    if n < 1 << 24:
        return b"\xfd" + struct.pack("<I", n)[:3]
    return b"\xfe" + struct.pack("<Q", n)
