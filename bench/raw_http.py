"""A lean HTTP/1.1 client for the load generator: one keep-alive connection over asyncio
streams, the few requests the benches send (JSON and multipart POSTs, DELETE, GET).

Why not httpx: the generator shares the machine's two cores with the server, Milvus and
MariaDB, and httpx's AsyncClient spends 1.2 ms of CPU a request at 64 clients and 2 ms at
one client, on the client's side of every latency (measured with `bench.bench_search
--sweep`, which prints the generator's CPU a request). Load tools such as wrk or hey spend a
small fraction of that; this client writes the request in one call and reads the answer by
its Content-Length (or chunks), which is all a closed-loop generator needs.
"""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import orjson


class RawHttpError(Exception):
    """The connection failed, closed early, or sent something that is not HTTP/1.1."""


class RawResponse:
    """The parts of an answer the benches read (httpx.Response's names)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers  # names in lower case
        self.content = content

    def json(self):
        return orjson.loads(self.content)


def multipart(files: list[tuple[str, tuple[str, bytes, str]]], data: dict[str, str]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type: form fields, then files given as
    httpx takes them, (field, (filename, bytes, content type))."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in data.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        parts.append(value.encode() + b"\r\n")
    for name, (filename, content, ctype) in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        )
        parts.append(head.encode())
        parts.append(content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class RawHttpClient:
    """One keep-alive connection to `base_url` (http:// only), reopened after a failure or a
    `Connection: close`; requests on it go one at a time, as a closed-loop client sends them."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"RawHttpClient speaks plain http://host:port, not {base_url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._host_header = f"{self._host}:{self._port}".encode()
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHttpClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._reader = self._writer = None

    async def get(self, path: str) -> RawResponse:
        return await self.request("GET", path)

    async def delete(self, path: str) -> RawResponse:
        return await self.request("DELETE", path)

    async def post(self, path: str, json=None, files=None, data: dict | None = None) -> RawResponse:
        if files is not None:
            pairs = list(files.items()) if isinstance(files, dict) else list(files)
            body, ctype = multipart(pairs, data or {})
            return await self.request("POST", path, body, ctype)
        return await self.request("POST", path, orjson.dumps(json), "application/json")

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str | None = None):
        try:
            async with asyncio.timeout(self._timeout):
                return await self._exchange(method, path, body, content_type)
        except (OSError, EOFError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            await self.aclose()  # the connection's state is unknown: start afresh next time
            raise RawHttpError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def _exchange(self, method: str, path: str, body: bytes, content_type: str | None) -> RawResponse:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._reader, self._writer
        assert reader is not None
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + self._host_header]
        if body or method == "POST":
            head.append(b"Content-Length: %d" % len(body))
        if content_type:
            head.append(b"Content-Type: " + content_type.encode())
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        status_line = await reader.readuntil(b"\r\n")
        version, status, *_ = status_line.split(b" ", 2)
        if not version.startswith(b"HTTP/1."):
            raise ValueError(f"not an HTTP/1.x answer: {status_line[:40]!r}")
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        code = int(status)
        if code in (204, 304) or 100 <= code < 200:  # no body, whatever the headers say
            content = b""
        elif "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            content = await self._read_chunks(reader)
        else:  # the body runs to the end of the connection
            content = await reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            await self.aclose()
        return RawResponse(code, headers, content)

    @staticmethod
    async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
        chunks = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
            pass
        return b"".join(chunks)
