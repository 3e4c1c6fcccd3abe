"""A real PostgreSQL server for the tests: Debian's `postgresql` package, a cluster made with
initdb in a temporary directory, listening on a free port of 127.0.0.1, gone when stopped.

    server = PgServer.start()
    url = server.create_database("t1")   # postgresql+psycopg://postgres@127.0.0.1:PORT/t1
    ...
    server.stop()

PostgreSQL refuses to run as root, and the tests run as root: then every server command runs as
the `postgres` system user that the Debian package creates, and the directory is handed to it.
The cluster trades durability for speed (fsync, synchronous_commit and full-page writes off): it
lives only as long as the test session.

`use_databases` / `database_url_for` let code that is not a fixture (a `serve` subprocess, the
in-memory tier) find the database the run chose for a state directory: one database per state
directory, as SQLite has one file per state directory.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

from tests.fakes import free_port

PG_GLOB: Final = "/usr/lib/postgresql/*/bin"
SERVER_USER: Final = "postgres"
MAX_CONNECTIONS: Final = 300
START_TIMEOUT_S: Final = 60.0
SERVER_TIMEZONE: Final = "Asia/Kolkata"
START_ATTEMPTS: Final = 3  # a free port can be taken between choosing it and listening on it


class PgServerError(RuntimeError):
    """The server could not be found, initialised or started; the message says why."""


def find_bin_dir() -> Path:
    """The bin directory of the newest PostgreSQL installed (Debian: /usr/lib/postgresql/N/bin)."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(path).parent.name))

    candidates = [path for path in glob.glob(PG_GLOB) if Path(path, "initdb").is_file()]
    if candidates:
        return Path(max(candidates, key=version))
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    raise PgServerError(
        f"no PostgreSQL server found ({PG_GLOB}/initdb, or initdb on PATH): "
        "install Debian's postgresql package (scripts/test-deps.sh does)"
    )


def _as_server_user() -> list[str]:
    """The prefix that runs a command as an unprivileged user: PostgreSQL refuses root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", SERVER_USER, "--"]


def _hand_over(path: Path) -> None:
    """Give `path` to the server's user when we are root (it must own its data directory)."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PgServerError(
            f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as "
            "(Debian's postgresql package creates it)"
        ) from None
    os.chown(path, user.pw_uid, user.pw_gid)


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(
        [*_as_server_user(), *argv], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise PgServerError(f"{what} failed ({done.returncode}): {done.stderr or done.stdout}")


@dataclass
class PgServer:
    """A running cluster; `stop()` ends it and removes its directory."""

    bin_dir: Path
    root: Path
    port: int
    host: str = "127.0.0.1"
    user: str = SERVER_USER
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @classmethod
    def start(cls, *, timeout_s: float = START_TIMEOUT_S) -> PgServer:
        """initdb into a new temporary directory and start the server on a free port."""
        bin_dir = find_bin_dir()
        root = Path(tempfile.mkdtemp(prefix="gpu-orch-pg-"))
        try:
            _hand_over(root)
            _run(
                [
                    str(bin_dir / "initdb"),
                    "--pgdata",
                    str(root / "data"),
                    "--auth=trust",
                    f"--username={SERVER_USER}",
                    "--encoding=UTF8",
                    "--locale=C",  # byte order, as SQLite compares text: the same listings
                    "--no-sync",
                ],
                "initdb",
            )
            for attempt in range(START_ATTEMPTS):
                server = cls(bin_dir=bin_dir, root=root, port=free_port())
                try:
                    server._start_once(timeout_s)
                    return server
                except PgServerError:
                    if attempt == START_ATTEMPTS - 1:
                        raise
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> None:
        options = " ".join(
            [
                f"-c listen_addresses={self.host}",
                f"-p {self.port}",
                f"-k {self.root}",  # its Unix socket beside the data, not in /var/run/postgresql
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                f"-c max_connections={MAX_CONNECTIONS}",
                # Not UTC, and not a whole hour: code that leans on the server's zone shows.
                f"-c timezone={SERVER_TIMEZONE}",
            ]
        )
        try:
            # -w: pg_ctl itself waits (up to -t seconds) until the server accepts connections.
            _run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "start",
                    "--pgdata",
                    str(self.data_dir),
                    "--log",
                    str(self.log_path),
                    "--wait",
                    f"--timeout={int(timeout_s)}",
                    "--options",
                    options,
                ],
                "pg_ctl start",
            )
            self._wait_accepting(timeout_s)
        except PgServerError as error:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise PgServerError(f"{error}\nserver log:\n{log[-4000:]}") from None

    def _wait_accepting(self, timeout_s: float) -> None:
        """Connect over TCP, as the service will, until it works or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=5):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() >= deadline:
                    raise PgServerError(f"not accepting connections: {error}") from None
                time.sleep(0.05)  # a poll interval under a deadline, not a synchronisation

    def conninfo(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` on this server (psycopg 3)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE `name` (a fresh unique one when None); returns its URL."""
        name = name or f"gpu_orch_{next(self._names)}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, closing whatever still holds a connection to it (an engine's pool)."""
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self) -> None:
        """Stop the server at once (nothing in it is kept) and remove its directory."""
        try:
            if (self.data_dir / "postmaster.pid").exists():
                _run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "stop",
                        "--pgdata",
                        str(self.data_dir),
                        "--mode=immediate",
                        "--wait",
                    ],
                    "pg_ctl stop",
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class StateDirDatabases:
    """One database per state directory on `server`, created on first use, all dropped by
    `drop_all` (the end of a test)."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self._urls: dict[Path, str] = {}

    def url_for(self, state_dir: Path) -> str:
        key = Path(state_dir).resolve()
        if key not in self._urls:
            self._urls[key] = self.server.create_database()
        return self._urls[key]

    def drop_all(self) -> None:
        urls, self._urls = list(self._urls.values()), {}
        for url in urls:
            self.server.drop_database(url.rsplit("/", 1)[1])


_active: StateDirDatabases | None = None


def use_databases(databases: StateDirDatabases | None) -> None:
    """Set (or, with None, clear) the databases `database_url_for` hands out."""
    global _active  # the run's one choice, set by conftest per test
    _active = databases


def database_url_for(state_dir: Path) -> str | None:
    """The database URL the run chose for `state_dir`; None means SQLite in the state dir."""
    return None if _active is None else _active.url_for(state_dir)
