"""Small helpers shared by the benches: child processes with their own peak RSS,
percentiles, tables, free ports, a uvicorn server in a subprocess."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent


def proc_status_kb(field: str, pid: int | str = "self") -> int:
    """A `Vm*` line of /proc/<pid>/status in kB (VmHWM = peak RSS, VmRSS = now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_child(
    args: Sequence[str], env: dict | None = None, timeout: float = 1800, stdout_path: Path | None = None
) -> tuple[int, str, str, int, float]:
    """Run `python <args>` from the repo root; (returncode, stdout, stderr, peak RSS kB, wall s).

    Peak RSS comes from wait4's rusage of that one child (ru_maxrss, kB), so
    each loader's number is its own, whatever ran before it.
    """
    full_env = os.environ.copy()
    full_env.update(env or {})
    t0 = time.perf_counter()
    out_f = open(stdout_path, "w+b") if stdout_path else subprocess.PIPE  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=full_env, stdout=out_f, stderr=subprocess.PIPE
    )
    # Read stderr on a thread so a chatty child cannot block on a full pipe.
    import threading

    err_chunks: list[bytes] = []
    out_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)]
    if proc.stdout is not None:
        readers.append(threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True))
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    for r in readers:
        r.join(timeout=10)
    if stdout_path:
        out_f.seek(0)
        out = out_f.read().decode(errors="replace")
        out_f.close()
    else:
        out = b"".join(out_chunks).decode(errors="replace")
    return proc.returncode, out, b"".join(err_chunks).decode(errors="replace"), usage.ru_maxrss, wall


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the parenthesised name: field 3 (state) is item 0."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_pids(pid: int) -> set[int]:
    """`pid` and its direct children (the test servers start their parts one level down)."""
    pids = {pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat_fields(entry.name)[1]) == pid:  # field 4: the parent pid
                    pids.add(int(entry.name))
    return pids


def tree_rss_mb(pid: int | None) -> float:
    """Resident memory of the server process and its children, MB (from /proc)."""
    if pid is None:
        return float("nan")
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += proc_status_kb("VmRSS", p)
    return total / 1024


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its children (from /proc)."""
    ticks = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(p)
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_rate(pid: int, seconds: float) -> float:
    """Cores the process tree `pid` keeps busy over the next `seconds` (its CPU seconds a second)."""
    before = tree_cpu_s(pid)
    time.sleep(seconds)
    return (tree_cpu_s(pid) - before) / seconds


def wait_quiet(
    pid: int, rate: float = 0.1, window_s: float = 10.0, timeout_s: float = 900.0
) -> tuple[float, float]:
    """Wait until the process tree `pid` uses at most `rate` cores over `window_s` (a server done
    with its background work: Milvus compacts and indexes for minutes after a load). Returns
    (seconds waited, the last window's rate); past `timeout_s` it returns what it saw."""
    start = time.perf_counter()
    while True:
        seen = cpu_rate(pid, window_s)
        waited = time.perf_counter() - start
        if seen <= rate or waited >= timeout_s:
            return round(waited, 1), round(seen, 3)


def last_json(text: str) -> dict:
    """The last line of `text` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError("no JSON line in output:\n" + text[-2000:])


def pct(values: Sequence[float], q: float) -> float:
    """Percentile by linear interpolation (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [
        " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells[0], widths, strict=True))
        ),
        line,
    ]
    for r in cells[1:]:
        out.append(
            " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:  # not measured
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The host's transparent huge page mode ("always [madvise] never" -> "madvise"); None
    without THP. Printed with bench figures: `always` cut Milvus' CPU for a FLAT scan by about 15%
    on one machine and not at all on another (bench/bench_thp.py, bench/README.md)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else None


def machine() -> dict:
    import platform

    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except StopIteration:
        model = platform.processor()
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "mem_gb": round(proc_meminfo_kb("MemTotal") / 2**20, 1),
        "transparent_hugepages": thp_mode(),
    }


def proc_meminfo_kb(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def add_torch_threads_arg(ap, who: str) -> None:
    """`--torch-threads`: OMP_NUM_THREADS for the server processes a bench starts."""
    ap.add_argument(
        "--torch-threads",
        default="default",
        help=f"OMP_NUM_THREADS for {who} ('default' = unset: torch uses every core)",
    )


def other_load() -> float:
    """1-minute load average: a busy machine (other tests running) skews every number."""
    return os.getloadavg()[0]


# MariaDB for bulk loads of ~50 KB rows (the README recommends the same): the
# test server's 16 MB redo log forces a checkpoint every ~300 rows. Measured on
# an idle machine (SqlImageStore.insert_rows + mark_indexed, 3,000 bench rows):
# 16 MB log 423 rows/s, mariadbd 1.7 ms CPU a row; 1 GB log 657-769 rows/s,
# 1.0-1.2 ms a row.
BULK_MARIADB_ARGS = (
    "--innodb-log-file-size=1G",
    "--innodb-log-buffer-size=256M",
    "--innodb-buffer-pool-size=2G",
)


@contextlib.contextmanager
def services(mariadb: bool = True, milvus: bool = True, mariadb_args: tuple = BULK_MARIADB_ARGS):
    """MariaDB and/or the Milvus 2.3 test server (scripts.dev_services), with the start-up time printed.

    MariaDB runs with `BULK_MARIADB_ARGS` unless told otherwise.

    Only one Milvus test server runs per machine: a bench waits here while a test
    session holds it (MILVUS_TEST_LOCK_TIMEOUT, default 900 s).
    """
    from scripts.dev_services import mariadb_server, milvus_server

    with contextlib.ExitStack() as stack:
        db = mv = None
        if mariadb:
            t = time.perf_counter()
            db = stack.enter_context(mariadb_server(extra_args=tuple(mariadb_args)))
            how = " ".join(mariadb_args) or "test settings"
            print(f"MariaDB up in {time.perf_counter() - t:.1f} s ({how})", flush=True)
        if milvus:
            t = time.perf_counter()
            print("starting the Milvus 2.3 test server (waits while another session holds it)...", flush=True)
            mv = stack.enter_context(milvus_server())
            print(f"Milvus up at {mv.uri} after {time.perf_counter() - t:.1f} s", flush=True)
        yield db, mv


class UvicornProcess:
    """The real entry point, `python -m app.main --port <free>`, with settings from `env`.

    Waits for /healthz; the model loads before uvicorn starts (preflight).
    """

    def __init__(self, env: dict, log_path: Path, timeout: float = 180, wait: bool = True) -> None:
        self.port = free_port()
        full_env = os.environ.copy()
        full_env.update(env)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.main", "--port", str(self.port)],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.timeout = timeout
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        import httpx

        log_path, timeout = self.log_path, self.timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited ({self.proc.returncode}); log {log_path}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.close()
        raise RuntimeError(f"server not up after {timeout}s; log {log_path}")

    def peak_rss_kb(self) -> int:
        try:
            return proc_status_kb("VmHWM", self.proc.pid)
        except OSError:
            return 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
