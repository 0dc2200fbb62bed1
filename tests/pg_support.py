"""PostgreSQL helpers for tests: throwaway schemas and a private server.

``fresh_schema_url`` gives a test its own schema on the shared server and
drops it afterwards. ``TemporaryPostgres`` runs a server of the test's own
(initdb into a temporary folder, ``postgres`` on a free loopback port), so
fault tests can stop, restart and kill it without touching anyone else's.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from orderflow.storage.postgres import split_url

__all__ = [
    "TemporaryPostgres",
    "burst_worker",
    "dump_schema",
    "find_bindir",
    "fresh_schema_url",
    "libpq_url",
    "with_options",
]

POSTGRES_ROOT = Path("/usr/lib/postgresql")


def with_options(url: str, **options: str) -> str:
    """Return ``url`` with query options set, replacing any of the same name."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key not in options]
    query.extend(options.items())
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def libpq_url(url: str) -> str:
    """Return ``url`` without orderflow's options, for connecting with psycopg directly."""
    return split_url(url)[0]


def schema_of(url: str) -> str:
    return split_url(url)[1].schema


@contextmanager
def fresh_schema_url(base_url: str) -> Iterator[str]:
    """Yield ``base_url`` with a new, unique ``?schema=``; drop that schema afterwards."""
    schema = "orderflow_test_" + secrets.token_hex(6)
    try:
        yield with_options(base_url, schema=schema)
    finally:
        drop_schema(base_url, schema)


def drop_schema(base_url: str, schema: str) -> None:
    with psycopg.connect(libpq_url(base_url), autocommit=True, connect_timeout=10) as conn:
        # A leaked transaction that holds a lock in the schema makes this
        # fail after 10 s instead of hanging the test run.
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def dump_schema(url: str) -> dict[str, list[tuple[str, ...]]]:
    """Return every row of every table in the URL's schema, as sorted text tuples."""
    schema = schema_of(url)
    dump: dict[str, list[tuple[str, ...]]] = {}
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
            " ORDER BY table_name",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(
                sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchall()
            dump[table] = sorted(tuple(str(value) for value in row) for row in rows)
    return dump


# A server of the test's own.


def find_bindir() -> Path | None:
    """Return the newest PostgreSQL bin folder that has initdb and postgres, if any."""
    candidates = []
    if POSTGRES_ROOT.is_dir():
        for folder in POSTGRES_ROOT.iterdir():
            bindir = folder / "bin"
            if folder.name.isdigit() and (bindir / "initdb").exists():
                candidates.append((int(folder.name), bindir))
    return max(candidates)[1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class TemporaryPostgres:
    """A PostgreSQL server in a temporary folder, listening on 127.0.0.1 only.

    As root, initdb and postgres run as the ``postgres`` user (they refuse to
    run as root) and the folder is given to that user. ``stop``, ``kill`` and
    ``restart`` act on the postmaster's own pid. The data and the port
    stay, so a restarted server has the same URL and contents.
    """

    def __init__(self, bindir: Path, *, startup_timeout: float = 30.0) -> None:
        self.bindir = bindir
        self.startup_timeout = startup_timeout
        self.folder = Path(tempfile.mkdtemp(prefix="orderflow-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the temporary PostgreSQL server is not running")
        return self.process.pid

    def initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        ]
        if self._user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed with exit status {result.returncode}: "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(
                f"the temporary PostgreSQL server is already running (pid {self.pid})"
            )
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.folder}",
            "-c",
            "max_connections=60",
            # The data is thrown away, so skip flushing it to disk.
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ]
        extra: dict[str, Any] = {}
        if self._user is not None:
            extra = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        with open(self.log, "ab") as log:
            # A session of its own, so a Ctrl-C meant for pytest does not
            # reach the server.
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **extra,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"postgres exited while starting; its log:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not accept connections within {self.startup_timeout} s; "
                        f"its log:\n{self.log_tail()}"
                    ) from None
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down (fast shutdown: sessions end, committed data is kept)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """End the postmaster and its backends at once, as a crash would.

        Backends make themselves session leaders (PostgreSQL's
        InitPostmasterChild calls setsid), so a signal to the postmaster's
        process group misses them. They are found by parent pid instead,
        while the stopped postmaster cannot fork more.
        """
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGSTOP)
        children = _child_pids(process.pid)
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

        deadline = time.monotonic() + 30
        while any(_is_running(pid) for pid in children):
            if time.monotonic() > deadline:
                raise RuntimeError(f"backends {children} of the killed server did not exit")
            time.sleep(0.01)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError as exc:
            return f"(no log: {exc})"


def _child_pids(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# Work done in other processes. It lives here, not in a test module, so a
# spawned child imports only this module.


def burst_worker(url: str, location: str, rounds: int) -> list[tuple[str, int]]:
    """Create orders in ``location`` and move each one twice; return what was acknowledged.

    Each returned pair is an order id and a version that a call returned,
    so the caller can check that every acknowledged change was kept.
    """
    from orderflow import Engine

    acknowledged: list[tuple[str, int]] = []
    with Engine.open(with_options(url, pool_max="2")) as engine:
        for index in range(rounds):
            order = engine.create([{"name": f"pizza {index}", "quantity": 1}], location=location)
            acknowledged.append((order.id, order.version))
            for state in ("CONFIRMED", "PREPARING"):
                order = engine.transition(order.id, state, expected_version=order.version)
                acknowledged.append((order.id, order.version))
    return acknowledged
