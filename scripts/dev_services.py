"""Start and stop private MariaDB and Milvus 2.3 servers for development: tests and benchmarks.

Plain Python (no pytest import): the test fixtures (tests/conftest.py), bench/ and a shell
session use it alike. It lives in scripts/ (developer tooling) rather than tests/, so that
bench/ needs nothing from the tests; the service itself never imports it (layer rule)::

    from scripts.dev_services import mariadb_server, milvus_server
    with mariadb_server() as db, milvus_server() as mv:
        print(db.url, mv.uri)

Why it looks the way it does:

- Every server lives under ``$TMPDIR/imgsearch-test-services/<kind>-<random>/`` with an
  ``owner.json`` naming the Python process that started it. A server whose owner is dead is a
  leftover of a crashed run: it is killed (only then, and only if it runs from our directory
  prefix) and its directory removed. A live owner's server is never touched.
- MariaDB takes a free port chosen once and kept across restarts, so a test can stop it and
  bring it back on the same port and datadir.
- The Milvus 2.3 server from PyPI binds fixed ports, so only one can run per machine. A file
  lock serialises test sessions that need it; the proxy port is forced (a clash is an error,
  not a silent move to the next port), and ports are probed with SO_REUSEADDR: without it a
  restart within ~60 s of the last run found our own TIME_WAIT sockets and quietly moved to
  other ports (see tests/MILVUS_NOTES.md).
- Children get PR_SET_PDEATHSIG when started from the main thread, plus ``atexit`` and pytest
  finalizers: a killed test run does not leave servers behind.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT_ENV = "IMGSEARCH_TEST_SERVICES_DIR"
KEEP_ENV = "KEEP_TEST_SERVICES"  # "1": leave data dirs on disk after the run, for post-mortems
MILVUS_PORT_ENV = "MILVUS_TEST_PORT"
MILVUS_LOCK_TIMEOUT_ENV = "MILVUS_TEST_LOCK_TIMEOUT"
DEFAULT_MILVUS_PORT = 19541
MILVUS_SESSION_TTL = 10

log = logging.getLogger(__name__)

_ACTIVE: list[_Service] = []
_ACTIVE_LOCK = threading.Lock()


class ServiceError(RuntimeError):
    """A test service could not be started or stopped; the message says why and where to look."""


class _DiedOfSignal(ServiceError):
    """The server process was killed by a signal while it started (worth one more try)."""


# --------------------------------------------------------------------------- helpers


def services_root() -> Path:
    """Directory that holds every test server's data (shared by all runs on this machine)."""
    root = Path(os.environ.get(ROOT_ENV) or Path(tempfile.gettempdir()) / "imgsearch-test-services")
    root.mkdir(parents=True, exist_ok=True)
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _proc_start_time(pid: int) -> str | None:
    """Kernel start time of a process (guards against pid reuse), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22, counted after the ")" that closes the command name.
    return stat.rsplit(")", 1)[1].split()[19]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _write_owner(base: Path) -> None:
    owner = {"pid": os.getpid(), "start": _proc_start_time(os.getpid())}
    (base / "owner.json").write_text(json.dumps(owner))


def _owner_alive(base: Path) -> bool:
    try:
        owner = json.loads((base / "owner.json").read_text())
    except (OSError, ValueError):
        return False
    return _proc_start_time(int(owner["pid"])) == owner.get("start")


def _kill_pid(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)  # a SIGSTOPped leftover would otherwise never die
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _proc_start_time(pid) is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


_SERVER_EXES = {"milvus", "mariadbd", "mysqld"}


def reap_stale(kind: str) -> list[int]:
    """Kill servers of ``kind`` left by dead test runs and remove their directories.

    A process counts as ours only if its command line points into our services root; it is
    killed only when the owner recorded in its directory is no longer alive.
    Returns the killed pids.
    """
    root = services_root()
    prefix = str(root / f"{kind}-")
    killed = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        args = _cmdline(pid)
        if not args or os.path.basename(args[0]) not in _SERVER_EXES:
            continue
        hit = next((a for a in args if prefix in a), None)
        if hit is None:
            continue
        base = Path(prefix + hit.split(prefix, 1)[1].split("/", 1)[0])
        if not _owner_alive(base):
            _kill_pid(pid)
            killed.append(pid)
    for base in root.glob(f"{kind}-*"):
        if not base.is_dir() or _owner_alive(base) or os.environ.get(KEEP_ENV) == "1":
            continue
        # A directory without owner.json may be another run's, created a moment ago.
        if not (base / "owner.json").exists() and time.time() - base.stat().st_mtime < 300:
            continue
        shutil.rmtree(base, ignore_errors=True)
    return killed


def _wait_stopped(pid: int, timeout_s: float = 5.0) -> None:
    """Wait until every thread of `pid` is stopped ("T" in /proc/<pid>/task/*/stat)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError, IndexError):
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if not states or all(state in ("T", "t") for state in states):
            return  # stopped (or gone: the caller's next call says so)
        time.sleep(0.005)
    raise ServiceError(f"process {pid} did not stop within {timeout_s:.0f} s of SIGSTOP")


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL the child when the parent goes away."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _dying_with_parent(cmd: list[str]) -> tuple[list[str], Any]:
    """`cmd` and the preexec_fn to start it with, so that the kernel SIGKILLs it when this
    process goes away. setpriv (util-linux) sets that in the child and execs `cmd`, so no Python
    runs between fork and exec: a preexec_fn makes subprocess fork for real, and in a test process
    with gRPC channels open (pymilvus) such children were seen to abort (SIGABRT, gRPC's poller
    writing "epoll_wait error: Bad file descriptor" to the child's output) before mariadbd ran,
    twice in a row. The preexec_fn only where setpriv is missing. PDEATHSIG fires when the
    *thread* that started the child exits, so it is asked for from the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return cmd, None
    if setpriv := shutil.which("setpriv"):
        return [setpriv, "--pdeathsig", "KILL", "--", *cmd], None
    return cmd, _die_with_parent


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


class _Service:
    kind = "service"

    def __init__(self, base_dir: Path | None = None) -> None:
        self.base = (
            Path(base_dir)
            if base_dir
            else Path(tempfile.mkdtemp(prefix=f"{self.kind}-", dir=services_root()))
        )
        self.base.mkdir(parents=True, exist_ok=True)
        _write_owner(self.base)
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)

    @property
    def running(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self, timeout: float = 120.0) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def restart(self, timeout: float = 120.0) -> None:
        """Stop (cleanly) and start again on the same port and data directory."""
        self.stop()
        self.start(timeout=timeout)

    def ensure_running(self) -> None:
        """Start the server again if a test left it stopped or paused."""
        self.resume()
        if not self.running:
            self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open but nothing answers (a hung server).

        Returns once every thread of the server has stopped: kill() only queues the signal, and
        on a busy machine a thread already running could still answer a query sent right after.
        """
        pid = self.pid
        if pid:
            os.kill(pid, signal.SIGSTOP)
            _wait_stopped(pid)

    def resume(self) -> None:
        pid = self.pid
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    @property
    def pid(self) -> int | None:  # pragma: no cover - overridden
        raise NotImplementedError

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Stop the server for the body of a ``with`` block; it is started again afterwards."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the server for the body of a ``with`` block; it is resumed afterwards."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def close(self) -> None:
        """Stop for good and remove the data directory (unless KEEP_TEST_SERVICES=1)."""
        with contextlib.suppress(Exception):
            self.resume()
        try:
            self.stop()
        finally:
            with _ACTIVE_LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)
            if os.environ.get(KEEP_ENV) != "1":
                shutil.rmtree(self.base, ignore_errors=True)


def active_services() -> list[_Service]:
    with _ACTIVE_LOCK:
        return list(_ACTIVE)


@atexit.register
def _close_all() -> None:
    for service in reversed(active_services()):
        with contextlib.suppress(Exception):
            service.close()


# --------------------------------------------------------------------------- MariaDB


def _which(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise ServiceError(f"{name} not found: install the Debian package mariadb-server (scripts/setup.sh)")
    return found


class MariaDBServer(_Service):
    """A private mariadbd on 127.0.0.1:<free port> with its own datadir.

    ``url`` is ``mysql://user:password@127.0.0.1:port/database``; the user has all privileges
    on every database, so tests can make their own with :meth:`create_database`.
    """

    kind = "mariadb"

    def __init__(
        self,
        database: str = "imgsearch_test",
        # Not "imgsearch": that is the deployment files' MYSQL_USER, which the deploy test creates
        # on this server with the files' own password (it must not change the suite's login).
        user: str = "imgsearch_test",
        password: str | None = None,
        port: int | None = None,
        base_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        reap_stale(self.kind)
        super().__init__(base_dir)
        self.datadir = self.base / "data"
        self.socket = self.base / "sock"
        self.error_log = self.base / "error.log"
        self.port = port or free_port()
        self.database = database
        self.user = user
        self.password = password or "pw_" + secrets.token_hex(8)
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialised = False

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def tmpdir(self) -> Path:
        # Its own, not /tmp: an install failed once when its temporary table file in the shared
        # /tmp vanished ("Error on delete of '/tmp/#sql-temptable-...'") under a parallel run.
        return self.base / "tmp"

    def _root_user_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            _which("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self.tmpdir}",  # passed on to the bootstrap server
            *self._root_user_args(),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-log-file-size=16M",
        ]
        res = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
        )
        if res.returncode != 0:
            raise ServiceError(
                f"mariadb-install-db failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )

    def _server_cmd(self) -> list[str]:
        return [
            _which("mariadbd"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--tmpdir={self.tmpdir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            *self._root_user_args(),
            f"--pid-file={self.base / 'pid'}",
            f"--log-error={self.error_log}",
            "--max-allowed-packet=64M",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--max-connections=500",
            # Tests do not survive power cuts; skip the fsyncs.
            "--innodb-flush-log-at-trx-commit=2",  # a killed mariadbd loses nothing; only an OS crash would
            "--innodb-doublewrite=0",
            "--innodb-buffer-pool-size=256M",
            "--innodb-log-file-size=16M",
            "--skip-innodb-adaptive-hash-index",
            *self.extra_args,
        ]

    def _root_connect(self, timeout: float = 5.0) -> Any:
        import pymysql

        return pymysql.connect(
            unix_socket=str(self.socket),
            user="root",
            password="",
            connect_timeout=timeout,
            read_timeout=60,
            write_timeout=60,
            autocommit=True,
            charset="utf8mb4",
        )

    # A mariadbd that dies of a signal while starting is started once more: once, on a loaded
    # 2-core machine, a restart after a clean shutdown aborted (SIGABRT) before it wrote a line
    # to its error log, and 80 restarts in a row (idle and loaded) did not do it again. An exit
    # with a status code (a bad option, a taken port, a broken datadir) is not retried.
    START_ATTEMPTS = 2

    def start(self, timeout: float = 120.0) -> None:
        """Start mariadbd (installing the datadir the first time) and wait until it answers."""
        if self.running:
            return
        self._install()
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, self.START_ATTEMPTS + 1):
            try:
                conn = self._start_once(timeout)
                break
            except _DiedOfSignal as exc:
                if attempt == self.START_ATTEMPTS:
                    raise ServiceError(str(exc)) from None
                log.warning("%s; starting it again", exc)
                time.sleep(1.0)
        with conn:
            if not self._initialised:
                self._create_user_and_db(conn)
                self._initialised = True

    def _start_once(self, timeout: float) -> Any:
        if port_is_listening(self.port):
            raise ServiceError(f"port {self.port} is already taken; cannot start MariaDB there")
        out = open(self.base / "mariadbd.out", "ab")  # noqa: SIM115 - lives as long as the process
        try:
            cmd, preexec = _dying_with_parent(self._server_cmd())
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,  # noqa: PLW1509 - only without setpriv
            )
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                # What mariadbd says before it opens its error log (or when it cannot) is in
                # mariadbd.out: both go in the message.
                message = (
                    f"mariadbd exited with {code} during start; {self.error_log}:\n"
                    + _tail(self.error_log)
                    + f"\n{self.base / 'mariadbd.out'}:\n"
                    + _tail(self.base / "mariadbd.out")
                )
                raise _DiedOfSignal(message) if code < 0 else ServiceError(message)
            try:
                return self._root_connect(timeout=2)
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last = exc
                time.sleep(0.1)
        self.stop()
        raise ServiceError(
            f"MariaDB not ready after {timeout:.0f}s ({last}); {self.error_log}:\n" + _tail(self.error_log)
        )

    def _create_user_and_db(self, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
                "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
            for host in ("%", "localhost", "127.0.0.1"):
                cur.execute(
                    "CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (self.user, host, self.password)
                )
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s", (self.user, host))
            # Anonymous accounts would shadow ours for local logins.
            cur.execute("DELETE FROM mysql.global_priv WHERE User = ''")
            cur.execute("FLUSH PRIVILEGES")

    def stop(self, timeout: float = 60.0) -> None:
        """Clean shutdown (SIGTERM, then SIGKILL after ``timeout``); data is kept."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL, like a crash or an OOM kill; InnoDB recovers on the next start."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)

    def connect(self, database: str | None = None, **kwargs: Any) -> Any:
        """A pymysql connection as the test user over TCP (autocommit on)."""
        import pymysql

        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "database": database or self.database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": 5,
            "read_timeout": 30,
            "write_timeout": 30,
        }
        params.update(kwargs)
        return pymysql.connect(**params)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (random name unless given) and return its URL."""
        name = name or "t_" + secrets.token_hex(6)
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad database name {name!r}")
        with self._root_connect() as conn, conn.cursor() as cur:
            cur.execute(
                f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
            )
        return self.url_for(name)

    def create_user_database(self, user: str, password: str, database: str) -> str:
        """A fresh `database` (dropped first when it exists) and a `user` with every privilege on
        it and on nothing else, as MySQL's image makes MYSQL_USER; returns its URL."""
        for name in (user, database):
            if not name.replace("_", "").isalnum():
                raise ValueError(f"bad name {name!r}")
        # The suite logs in as self.user to self.database: re-creating either would lock it out or
        # drop its tables mid-run.
        if user == self.user or database == self.database:
            raise ValueError(f"{user!r}/{database!r} is this server's own user or database")
        with self._root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
            cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            for host in ("%", "localhost", "127.0.0.1"):
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, host, password))
                cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO %s@%s", (user, host))
            cur.execute("FLUSH PRIVILEGES")
        return f"mysql://{user}:{password}@{self.host}:{self.port}/{database}"

    def drop_database(self, name: str) -> None:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad database name {name!r}")
        with self._root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def __repr__(self) -> str:
        return (
            f"<MariaDBServer {self.host}:{self.port} {'running' if self.running else 'stopped'} {self.base}>"
        )


@contextlib.contextmanager
def mariadb_server(**kwargs: Any) -> Iterator[MariaDBServer]:
    """Start a private MariaDB, yield it, and always stop it and remove its data."""
    server = MariaDBServer(**kwargs)
    try:
        server.start()
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- Milvus


def _milvus_version() -> str:
    import milvus

    return milvus.__version__


def _milvus_classes() -> tuple[type, type]:
    """MilvusServer / MilvusServerConfig subclasses with our port and process handling."""
    try:
        import milvus
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise ServiceError("the `milvus` package (milvus==2.3.5) is not installed") from exc

    class Config(milvus.MilvusServerConfig):
        def try_bind_port(self, port: int) -> socket.socket | None:
            # SO_REUSEADDR: ports in TIME_WAIT from our own earlier connections are free to
            # reuse; a real listener still makes the bind fail.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                sock.listen()
                return sock
            except OSError:
                sock.close()
                return None

    class Server(milvus.MilvusServer):
        def start(self) -> None:
            # Same as MilvusServer.start (pinned milvus==2.3.5) but with stdin closed and the
            # child tied to our life (PDEATHSIG), and no chdir of the whole test process.
            self.config.resolve()
            milvus._initialize_data_files(self.config.base_data_dir)
            exe = self.get_milvus_executable_path()
            env = os.environ.copy()
            self.webservice_port, sock = self.config.resolve_port(self.webservice_port)
            sock.close()
            env.update(
                {
                    "DEPLOY_MODE": "STANDALONE",
                    "METRICS_PORT": str(self.webservice_port),
                    "MILVUS_RUN_DIR": os.path.join(self.config.base_data_dir, "run"),
                }
            )
            self.prepend_path_to_envs(env, "LD_LIBRARY_PATH", os.path.dirname(exe))
            for name in ("stdout", "stderr"):
                path = os.path.join(self.config.base_data_dir, "logs", f"milvus-{name}.log")
                self.proc_fds[name] = open(path, "a", encoding="utf-8")  # noqa: SIM115
            cmd, preexec = _dying_with_parent([exe, "run", "standalone"])
            self.server_proc = subprocess.Popen(
                cmd,
                cwd=self.config.base_data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.proc_fds["stdout"],
                stderr=self.proc_fds["stderr"],
                preexec_fn=preexec,  # noqa: PLW1509 - only without setpriv
            )
            if self.wait_for_started:
                self.wait_started()

    return Server, Config


class MilvusTestServer(_Service):
    """The PyPI Milvus 2.3.5 server on ``http://127.0.0.1:<port>`` (default 19541)."""

    kind = "milvus"

    def __init__(
        self,
        port: int | None = None,
        base_dir: Path | None = None,
        lock_timeout: float | None = None,
        config: dict[str, object] | None = None,
    ) -> None:
        """`config`: milvus.yaml keys (dotted, e.g. "dataCoord.segment.maxSize") to change."""
        self.port = port or int(os.environ.get(MILVUS_PORT_ENV, DEFAULT_MILVUS_PORT))
        self._lock_fd: int | None = None
        self._acquire_machine_lock(
            lock_timeout
            if lock_timeout is not None
            else float(os.environ.get(MILVUS_LOCK_TIMEOUT_ENV, "900"))
        )
        try:
            reap_stale(self.kind)
            super().__init__(base_dir)
            server_cls, config_cls = _milvus_classes()
            # Passing proxy_port as a setting makes a clash an error instead of a silent move.
            self._server = server_cls(config_cls(proxy_port=self.port))
            self._server.set_base_dir(str(self.base))
            # After a kill (stop() always ends in SIGKILL: a graceful stop did not finish in 60 s)
            # the new process waits for the dead one's etcd session to expire (30 s by default);
            # a short TTL keeps a restart in tests short.
            self._server.config.set("common.session.ttl", MILVUS_SESSION_TTL)
            for key, value in (config or {}).items():
                self._server.config.set(key, value)
            # Unpacking the binaries costs seconds per fresh base dir: share one copy
            # (safe: we hold the machine lock while it is written).
            cache = services_root() / f"bincache-milvus-{_milvus_version()}"
            cache.mkdir(exist_ok=True)
            if not (self.base / "bin").exists():
                (self.base / "bin").symlink_to(cache, target_is_directory=True)
        except BaseException:
            self._release_machine_lock()
            raise

    # One Milvus 2.3 per machine: its etcd/coordinator ports are fixed.
    def _acquire_machine_lock(self, timeout: float) -> None:
        path = services_root() / "milvus.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ServiceError(
                        f"another test session holds {path} (a Milvus test server runs on this machine) "
                        f"for more than {timeout:.0f}s; set {MILVUS_LOCK_TIMEOUT_ENV} to wait longer"
                    ) from None
                time.sleep(0.5)
        self._lock_fd = fd

    def _release_machine_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._server.server_proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    @property
    def log_dir(self) -> Path:
        return self.base / "logs"

    def _listener_description(self) -> str:
        for pid in _pids():
            args = _cmdline(pid)
            if args and args[0].endswith("/milvus") and "run" in args:
                return f"pid {pid}: {' '.join(args)}"
        return "no milvus process found; see `ss -ltnp`"

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until it answers and every collection is loaded."""
        if self.running:
            return
        if port_is_listening(self.port):
            raise ServiceError(
                f"port {self.port} already has a listener, not ours ({self._listener_description()}); "
                f"stop it or set {MILVUS_PORT_ENV}"
            )
        self._server.wait_for_started = False
        # A restart can die at once while etcd still holds the previous process's
        # session (it then dials the dead coordinator); that session expires
        # within its 10 s lease, so a second or third attempt starts cleanly.
        for attempt in range(3):
            try:
                self._server.start()
            except RuntimeError as exc:  # the package's "bind failed" for a forced port
                raise ServiceError(f"cannot start Milvus on port {self.port}: {exc}") from exc
            try:
                self._wait_healthy(timeout)
                break
            except ServiceError:
                if attempt == 2:
                    raise
                time.sleep(12)
        self.wait_ready(timeout=timeout)

    def _wait_healthy(self, timeout: float) -> None:
        # Like MilvusServer.wait_started, but notices a server that died instead of polling on.
        url = f"http://127.0.0.1:{self._server.webservice_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                self.stop()
                raise ServiceError(
                    f"Milvus exited during start; logs in {self.log_dir}:\n"
                    + _tail(self.log_dir / "milvus-stdout.log")
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if b"OK" in resp.read():
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServiceError(
            f"Milvus not healthy after {timeout:.0f}s; logs in {self.log_dir}:\n"
            + _tail(self.log_dir / "milvus-stdout.log")
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll until list_collections works and each collection answers a Strong count.

        After a restart the server reports healthy ~15 s before loaded collections can be
        queried ("collection not loaded", then deadline errors), so health alone is not enough.
        """
        import logging

        from pymilvus import MilvusClient

        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # retries log stack traces at ERROR
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        client = None
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    raise ServiceError(f"Milvus exited during start; logs in {self.log_dir}")
                try:
                    if client is None:
                        client = MilvusClient(uri=self.uri, timeout=3, dedicated=True)
                    for name in client.list_collections(timeout=3):
                        client.query(
                            name, filter="", output_fields=["count(*)"], consistency_level="Strong", timeout=5
                        )
                    return
                except ServiceError:
                    raise
                except Exception as exc:  # noqa: BLE001 - anything means "not yet"
                    last = exc
                    time.sleep(0.5)
            raise ServiceError(f"Milvus at {self.uri} not ready after {timeout:.0f}s: {last}")
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 1 s (what MilvusServer.stop does); data is kept."""
        self.resume()
        self._server.stop()

    def kill(self) -> None:
        """SIGKILL at once, like a crash."""
        proc = self._server.server_proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self._server.stop()

    def drop_all_collections(self) -> None:
        """Remove every collection (isolation between tests that share the session server)."""
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.uri, timeout=10, dedicated=True)
        try:
            for name in client.list_collections(timeout=10):
                client.drop_collection(name, timeout=30)
        finally:
            client.close()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release_machine_lock()

    def __repr__(self) -> str:
        return f"<MilvusTestServer {self.uri} {'running' if self.running else 'stopped'} {self.base}>"


@contextlib.contextmanager
def milvus_server(**kwargs: Any) -> Iterator[MilvusTestServer]:
    """Start the Milvus 2.3 test server, yield it, and always stop it and remove its data."""
    server = MilvusTestServer(**kwargs)
    try:
        server.start()
        yield server
    finally:
        server.close()
