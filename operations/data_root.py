"""The data root, sealed: the server reads only files whose real path lies under DATA_ROOT.

A name is checked when a request arrives (`resolve_under`), and every file is
checked again when it is opened (`opened_under`, `read_under`): the check is
made on the file that was opened (its real path from /proc/self/fd, or, where
there is no /proc, its device and inode against the real path's), so a
symlink put in place between the request and the read is refused, and a file
swapped after it was opened is still the one that was checked. Symlinks that
stay inside the root are fine.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from operations.errors import BadRequest, PayloadTooLarge

_PROC_FD = Path("/proc/self/fd")
# Linux limits, in bytes: one path component, and a whole path.
_NAME_MAX, _PATH_MAX = 255, 4096


def _outside(what: str) -> BadRequest:
    return BadRequest(f"{what} is outside the data root", path=what[:200])


def _is_under(root: Path, real: Path) -> bool:
    return real == root or root in real.parents


def resolve_under(root: Path, relative: str, what: str = "path") -> Path:
    """`relative` inside `root`, with symlinks followed, or BadRequest: the server reads nothing else."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise BadRequest(f"{what} is empty or invalid")
    # A name the file system cannot hold (ENAMETOOLONG) is the client's error, found here
    # rather than as an OSError from the first stat of the path.
    if any(len(part.encode("utf-8", "surrogatepass")) > _NAME_MAX for part in relative.split("/")) or (
        len(relative.encode("utf-8", "surrogatepass")) > _PATH_MAX
    ):
        raise BadRequest(f"{what} is longer than a file name can be", path=relative[:200])
    root = Path(os.path.realpath(root))
    candidate = Path(os.path.realpath(root / relative))
    if not _is_under(root, candidate):
        raise BadRequest(f"{what} {relative!r} is outside the data root", path=relative[:200])
    return candidate


def check_under(root: Path, path: Path | str) -> Path:
    """The real path of `path` (symlinks followed), or BadRequest when it is not under `root`."""
    real = Path(os.path.realpath(path))
    if not _is_under(Path(os.path.realpath(root)), real):
        raise _outside(Path(path).name or str(path))
    return real


@contextlib.contextmanager
def opened_under(root: Path, path: Path | str) -> Iterator[str]:
    """Open `path`, check the opened file lies under `root`, and yield a path to that very file.

    On Linux the yielded path is /proc/self/fd/N: whoever opens it gets the
    checked file even if the name is swapped meanwhile. The descriptor stays
    open until the block ends.
    """
    root_real = Path(os.path.realpath(root))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BadRequest(f"cannot open {Path(path).name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest(f"{Path(path).name} is not a regular file")
        proc = _PROC_FD / str(fd)
        if proc.is_symlink():
            real = Path(os.readlink(proc))
            readable = str(proc)
        else:  # no /proc: the real path must name the same file as the descriptor
            real = Path(os.path.realpath(path))
            same = os.stat(real)
            if (same.st_dev, same.st_ino) != (info.st_dev, info.st_ino):
                raise _outside(Path(path).name)
            readable = str(real)
        if not _is_under(root_real, real):
            raise _outside(Path(path).name)
        yield readable
    finally:
        os.close(fd)


def read_under(root: Path, path: Path | str, max_bytes: int) -> bytes:
    """The bytes of `path` once checked to lie under `root`; PayloadTooLarge past `max_bytes`."""
    with opened_under(root, path) as readable:
        size = os.stat(readable).st_size
        if size > max_bytes:
            raise PayloadTooLarge(f"file is over {max_bytes} bytes")
        with open(readable, "rb") as f:
            data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"file is over {max_bytes} bytes")
    return data
