"""SQLite storage: the embedded default.

One file in WAL mode. Every write runs in ``BEGIN IMMEDIATE``, which takes
the database's single write lock at the start of the transaction, so writers
in all threads and processes are serialised and each location's head moves
by exactly one per event, in commit order. Within one process, writers also
queue on a ``threading.RLock`` first, so threads wait in line instead of
sleeping in SQLite's busy handler; other processes wait up to the busy
timeout.

Each read borrows a connection from a small pool of readers. In WAL mode a read transaction sees
one consistent version of the database while writers go on, which makes the
snapshot and the event log reads consistent with their head.

Tables carry an ``orderflow_`` prefix so they can share a file with the
host application's own tables.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import sqlite_utils
from sqlite_utils.migrations import Migrations

from ..digest import digest_of
from ..errors import (
    ConfigurationError,
    HistoryTruncated,
    IdConflict,
    StorageBusy,
    StorageError,
    StorageUnavailable,
)
from ..models import Event, EventPage, Item, LogPosition, Order, Snapshot, dumps, format_time
from .base import Change, LockedLocation, LockedOrder, StoredResult

__all__ = ["SQLiteStorage"]

logger = logging.getLogger(__name__)

MEMORY = ":memory:"
MAX_IDLE_READERS = 8


class _OrderflowMigrations(Migrations):
    migrations_table = "orderflow_migrations"


migrations = _OrderflowMigrations("orderflow")


@migrations(name="0001_initial")
def _initial_schema(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE orderflow_locations (
            location TEXT PRIMARY KEY,
            epoch TEXT NOT NULL,
            head INTEGER NOT NULL,
            oldest INTEGER NOT NULL,
            created_at TEXT NOT NULL
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE orderflow_orders (
            id TEXT PRIMARY KEY,
            location TEXT NOT NULL,
            state TEXT NOT NULL,
            version INTEGER NOT NULL,
            active INTEGER NOT NULL,
            items TEXT NOT NULL,
            meta TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            created_seq INTEGER NOT NULL
        )
        """
    )
    db.execute(
        "CREATE INDEX orderflow_orders_active ON orderflow_orders (location, created_seq)"
        " WHERE active = 1"
    )
    db.execute(
        """
        CREATE TABLE orderflow_events (
            location TEXT NOT NULL,
            seq INTEGER NOT NULL,
            order_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            version INTEGER NOT NULL,
            at TEXT NOT NULL,
            actor TEXT,
            reason TEXT,
            body TEXT NOT NULL,
            PRIMARY KEY (location, seq)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE INDEX orderflow_events_order ON orderflow_events (order_id, seq)")
    db.execute(
        """
        CREATE TABLE orderflow_idempotency (
            location TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            response TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (location, key)
        ) WITHOUT ROWID
        """
    )


_ORDER_COLUMNS = "id, location, state, version, items, meta, created_at, updated_at"

_SQL_SELECT_ORDER = f"SELECT {_ORDER_COLUMNS} FROM orderflow_orders WHERE id = ?"
_SQL_SELECT_POSITION = "SELECT epoch, head, oldest FROM orderflow_locations WHERE location = ?"
_SQL_SELECT_KEY = (
    "SELECT fingerprint, response FROM orderflow_idempotency WHERE location = ? AND key = ?"
)
_SQL_INSERT_ORDER = (
    "INSERT INTO orderflow_orders (id, location, state, version, active, items, meta,"
    " created_at, updated_at, created_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_UPDATE_STATE = (
    "UPDATE orderflow_orders SET state = ?, version = ?, active = ?, updated_at = ?"
    " WHERE id = ? AND version = ?"
)
_SQL_UPDATE_ORDER = (
    "UPDATE orderflow_orders SET state = ?, version = ?, active = ?, items = ?, meta = ?,"
    " updated_at = ? WHERE id = ? AND version = ?"
)
_SQL_SET_HEAD = "UPDATE orderflow_locations SET head = ? WHERE location = ?"
_SQL_INSERT_EVENT = (
    "INSERT INTO orderflow_events (location, seq, order_id, kind, from_state, to_state,"
    " version, at, actor, reason, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_INSERT_KEY = (
    "INSERT INTO orderflow_idempotency (location, key, fingerprint, response, created_at)"
    " VALUES (?, ?, ?, ?, ?)"
)
_SQL_ACTIVE_ORDERS = (
    f"SELECT {_ORDER_COLUMNS} FROM orderflow_orders WHERE location = ? AND active = 1"
    " ORDER BY created_seq"
)
_SQL_EVENTS_SINCE = (
    "SELECT body FROM orderflow_events WHERE location = ? AND seq > ? ORDER BY seq LIMIT ?"
)


def _order_from_row(row: tuple[Any, ...]) -> Order:
    return Order(
        id=row[0],
        location=row[1],
        state=row[2],
        version=row[3],
        items=tuple(Item.from_dict(item) for item in json.loads(row[4])),
        meta=json.loads(row[5]),
        created_at=datetime.fromisoformat(row[6]),
        updated_at=datetime.fromisoformat(row[7]),
    )


def _items_json(order: Order) -> str:
    return dumps([item.to_dict() for item in order.items])


@contextmanager
def _translate_errors(path: str) -> Iterator[None]:
    """Turn sqlite3 exceptions into orderflow storage errors."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        message = str(exc)
        if "locked" in message or "busy" in message:
            raise StorageBusy(
                f"the SQLite database {path} stayed locked by another writer past the busy "
                f"timeout ({message}); retry, or raise busy_timeout in the URL"
            ) from exc
        raise StorageUnavailable(f"SQLite database {path} failed: {message}") from exc
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.IntegrityError):
            raise
        raise StorageUnavailable(f"SQLite database {path} failed: {exc}") from exc


class _SQLiteWrite:
    """The write transaction handed to the engine by ``SQLiteStorage.write``."""

    __slots__ = ("_conn", "_locations", "_storage")

    def __init__(self, storage: SQLiteStorage, conn: sqlite3.Connection) -> None:
        self._storage = storage
        self._conn = conn
        self._locations: dict[str, LogPosition] = {}

    def lock_location(self, location: str, idempotency_key: str | None = None) -> LockedLocation:
        # BEGIN IMMEDIATE already holds the database's write lock, so reading
        # the position is enough; the dictionary keeps the head that this
        # transaction advanced.
        position = self._locations.get(location)
        if position is None:
            position = self._storage._read_position(self._conn, location, create=True)
            self._locations[location] = position
        stored = None
        if idempotency_key is not None:
            row = self._conn.execute(_SQL_SELECT_KEY, (location, idempotency_key)).fetchone()
            if row is not None:
                stored = StoredResult(row[0], Order.from_dict(json.loads(row[1])))
        return LockedLocation(position, stored)

    def lock_order(self, order_id: str, idempotency_key: str | None = None) -> LockedOrder | None:
        row = self._conn.execute(_SQL_SELECT_ORDER, (order_id,)).fetchone()
        if row is None:
            return None
        locked = self.lock_location(row[1], idempotency_key)
        return LockedOrder(locked.position, _order_from_row(row), locked.stored)

    def save(self, change: Change) -> None:
        order = change.order
        event = change.event
        conn = self._conn
        position = self._locations[order.location]
        if event.seq != position.head + 1:
            raise StorageError(
                f"event seq {event.seq} does not follow head {position.head} of location "
                f"{order.location!r}; this is a bug in the caller of save()"
            )
        active = 1 if change.active else 0
        updated_at = format_time(order.updated_at)

        if change.previous_version is None:
            try:
                conn.execute(
                    _SQL_INSERT_ORDER,
                    (
                        order.id,
                        order.location,
                        order.state,
                        order.version,
                        active,
                        _items_json(order),
                        dumps(dict(order.meta)),
                        format_time(order.created_at),
                        updated_at,
                        event.seq,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise IdConflict(order.id) from exc
        elif change.items_changed:
            cursor = conn.execute(
                _SQL_UPDATE_ORDER,
                (
                    order.state,
                    order.version,
                    active,
                    _items_json(order),
                    dumps(dict(order.meta)),
                    updated_at,
                    order.id,
                    change.previous_version,
                ),
            )
            self._check_updated(cursor, change)
        else:
            cursor = conn.execute(
                _SQL_UPDATE_STATE,
                (order.state, order.version, active, updated_at, order.id, change.previous_version),
            )
            self._check_updated(cursor, change)

        conn.execute(_SQL_SET_HEAD, (event.seq, order.location))
        conn.execute(
            _SQL_INSERT_EVENT,
            (
                order.location,
                event.seq,
                order.id,
                event.kind,
                event.from_state,
                event.to_state,
                event.version,
                format_time(event.at),
                event.actor,
                event.reason,
                event.to_json(),
            ),
        )
        if change.idempotency_key is not None:
            conn.execute(
                _SQL_INSERT_KEY,
                (
                    order.location,
                    change.idempotency_key,
                    change.fingerprint,
                    order.to_json(),
                    updated_at,
                ),
            )
        self._locations[order.location] = LogPosition(
            position.location, position.epoch, event.seq, position.oldest
        )

    def _check_updated(self, cursor: sqlite3.Cursor, change: Change) -> None:
        if cursor.rowcount != 1:
            raise StorageError(
                f"order {change.order.id!r} was not at version {change.previous_version} "
                "when written, although the write lock was held; the database may have "
                "been changed outside orderflow"
            )


class SQLiteStorage:
    """Storage in one SQLite file (or in memory, for tests and demos).

    ``synchronous`` is SQLite's ``PRAGMA synchronous``: ``full`` (default)
    makes every acknowledged commit survive a power loss; ``normal`` is
    faster and survives a crash of the process but may lose the last
    commits on power loss. ``busy_timeout`` is in milliseconds.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        busy_timeout: int = 5000,
    ) -> None:
        if synchronous.lower() not in ("full", "normal", "extra"):
            raise ConfigurationError(
                f"synchronous={synchronous!r} is not supported; use full, normal or extra"
            )
        if busy_timeout < 0:
            raise ConfigurationError("busy_timeout must be a number of milliseconds, at least 0")
        self._path = str(path)
        self._memory = self._path == MEMORY
        self._synchronous = synchronous.upper()
        self._busy_timeout = busy_timeout
        # Reentrant, so that close() from a commit listener does not wait for itself.
        self._write_lock = threading.RLock()
        # Idle reader connections. A read takes one for its transaction and
        # gives it back, so no two threads ever use a connection at once and
        # threads that end leave no connection behind.
        self._idle_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SQLiteStorage:
        """Build storage from ``sqlite:///relative.db``, ``sqlite:////absolute.db``
        or ``sqlite://:memory:``, with optional ``?synchronous=&busy_timeout=``."""
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ConfigurationError(f"not a SQLite URL: {url!r}")
        if parts.netloc == MEMORY or parts.path in ("/" + MEMORY, MEMORY):
            path = MEMORY
        elif parts.netloc:
            raise ConfigurationError(
                f"SQLite URL {url!r} has a host part; write sqlite:///relative.db "
                "or sqlite:////absolute/path.db"
            )
        else:
            path = parts.path[1:] if parts.path.startswith("/") else parts.path
            if not path:
                raise ConfigurationError(
                    f"SQLite URL {url!r} names no file; write sqlite:///orderflow.db"
                )
        options: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "synchronous":
                options["synchronous"] = value
            elif key == "busy_timeout":
                if not value.isdigit():
                    raise ConfigurationError(
                        f"busy_timeout={value!r} in {url!r} must be a whole number of milliseconds"
                    )
                options["busy_timeout"] = int(value)
            else:
                raise ConfigurationError(
                    f"unknown SQLite URL option {key!r}; known options: synchronous, busy_timeout"
                )
        return cls(path, **options)

    @property
    def url(self) -> str:
        if self._memory:
            return "sqlite://:memory:"
        return "sqlite:///" + self._path

    @property
    def path(self) -> str:
        return self._path

    # Connections.

    def _connect(self) -> sqlite3.Connection:
        with _translate_errors(self._path):
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout / 1000,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=64,
            )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """Lend an idle reader connection (a new one if none is idle) for one read."""
        with self._readers_lock:
            self._writer_connection()
            conn = self._idle_readers.pop() if self._idle_readers else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._readers_lock:
                keep = not self._closed and len(self._idle_readers) < MAX_IDLE_READERS
                if keep:
                    self._idle_readers.append(conn)
            if not keep:
                conn.close()

    def _writer_connection(self) -> sqlite3.Connection:
        if self._closed or self._writer is None:
            raise StorageUnavailable(f"SQLite storage {self.url} is not open; call open() first")
        return self._writer

    def open(self) -> None:
        if not self._memory:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = self._connect()
        with _translate_errors(self._path):
            if not self._memory:
                mode = self._enable_wal(self._writer)
                if mode.lower() != "wal":
                    raise StorageUnavailable(
                        f"SQLite database {self._path} cannot use WAL mode (got {mode!r})"
                    )
            db = sqlite_utils.Database(self._writer, execute_plugins=False)
            with self._write_lock:
                # BEGIN IMMEDIATE makes a second process that opens the same
                # file at the same moment wait, then find the schema done.
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    pending = [m.name for m in migrations.pending(db)]
                    migrations.apply(db)
                    self._writer.execute("COMMIT")
                except BaseException:
                    self._writer.execute("ROLLBACK")
                    raise
        if pending:
            logger.info("migrated SQLite database %s: applied %s", self._path, ", ".join(pending))
        logger.info("opened SQLite storage %s", self.url)

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        # Switching to WAL needs an exclusive lock, and SQLite reports
        # "database is locked" at once, without the busy handler, when
        # another connection opens the same new file at that moment.
        deadline = time.monotonic() + self._busy_timeout / 1000
        while True:
            try:
                mode: str = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                return mode
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.01)

    def close(self) -> None:
        """Close the writer and the idle readers; readers in use close when their read ends."""
        with self._readers_lock:
            self._closed = True
            idle, self._idle_readers = self._idle_readers, []
        for conn in idle:
            conn.close()
        # Closing a connection while another thread runs a statement on it
        # crashes the interpreter (a segmentation fault in CPython 3.11.7's
        # sqlite3), so the writer is closed only once no write is running.
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
            self._writer = None

    # Writes.

    @contextmanager
    def write(self, on_commit: Callable[[], None] | None = None) -> Iterator[_SQLiteWrite]:
        conn = self._writer_connection()
        with self._write_lock:
            with _translate_errors(self._path):
                conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteWrite(self, conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            try:
                with _translate_errors(self._path):
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if on_commit is not None:
                on_commit()

    def _read_position(
        self, conn: sqlite3.Connection, location: str, *, create: bool
    ) -> LogPosition:
        row = conn.execute(_SQL_SELECT_POSITION, (location,)).fetchone()
        if row is None:
            if not create:
                raise LookupError(location)
            epoch = secrets.token_hex(8)
            conn.execute(
                "INSERT INTO orderflow_locations (location, epoch, head, oldest, created_at)"
                " VALUES (?, ?, 0, 0, ?)",
                (location, epoch, format_time(datetime.now(UTC))),
            )
            logger.info("created event log of location %r with epoch %s", location, epoch)
            return LogPosition(location, epoch, 0, 0)
        return LogPosition(location, row[0], row[1], row[2])

    # Reads.

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Run a read transaction: every statement inside sees one database version."""
        if self._memory:
            # One connection serves everything, so reads queue with writes.
            with self._write_lock, _translate_errors(self._path):
                conn = self._writer_connection()
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    conn.execute("COMMIT")
            return
        with self._reader() as conn, _translate_errors(self._path):
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    def _ensure_location(self, location: str) -> None:
        with self.write() as tx:
            tx.lock_location(location)

    def get_order(self, order_id: str) -> Order | None:
        with self._read() as conn:
            row = conn.execute(_SQL_SELECT_ORDER, (order_id,)).fetchone()
        return None if row is None else _order_from_row(row)

    def order_history(self, order_id: str) -> list[Event] | None:
        with self._read() as conn:
            exists = conn.execute(
                "SELECT 1 FROM orderflow_orders WHERE id = ?", (order_id,)
            ).fetchone()
            rows = conn.execute(
                "SELECT body FROM orderflow_events WHERE order_id = ? ORDER BY seq", (order_id,)
            ).fetchall()
        if exists is None:
            return None
        return [Event.from_json(row[0]) for row in rows]

    def position(self, location: str) -> LogPosition:
        with self._read() as conn:
            row = conn.execute(_SQL_SELECT_POSITION, (location,)).fetchone()
        if row is None:
            self._ensure_location(location)
            return self.position(location)
        return LogPosition(location, row[0], row[1], row[2])

    def snapshot(self, location: str) -> Snapshot:
        with self._read() as conn:
            row = conn.execute(_SQL_SELECT_POSITION, (location,)).fetchone()
            rows = conn.execute(_SQL_ACTIVE_ORDERS, (location,)).fetchall() if row else []
        if row is None:
            self._ensure_location(location)
            return self.snapshot(location)
        orders = tuple(_order_from_row(r) for r in rows)
        return Snapshot(
            location=location,
            epoch=row[0],
            head=row[1],
            digest=digest_of((order.id, order.version) for order in orders),
            orders=orders,
        )

    def events_since(self, location: str, since: int, limit: int) -> EventPage:
        with self._read() as conn:
            row = conn.execute(_SQL_SELECT_POSITION, (location,)).fetchone()
            rows = (
                conn.execute(_SQL_EVENTS_SINCE, (location, since, limit)).fetchall() if row else []
            )
        if row is None:
            self._ensure_location(location)
            return self.events_since(location, since, limit)
        epoch, head, oldest = row
        if since < oldest:
            raise HistoryTruncated(location, since, oldest)
        return EventPage(location, epoch, head, tuple(Event.from_json(r[0]) for r in rows))

    def locations(self) -> list[LogPosition]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT location, epoch, head, oldest FROM orderflow_locations ORDER BY location"
            ).fetchall()
        return [LogPosition(*row) for row in rows]

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()

    # Maintenance.

    def prune(self, location: str, before: datetime) -> int:
        cutoff = format_time(before)
        with self.write() as tx:
            position = tx.lock_location(location).position
            conn = self._writer_connection()
            (last_old,) = conn.execute(
                "SELECT max(seq) FROM orderflow_events WHERE location = ? AND at < ?",
                (location, cutoff),
            ).fetchone()
            (first_active,) = conn.execute(
                "SELECT min(created_seq) FROM orderflow_orders WHERE location = ? AND active = 1",
                (location,),
            ).fetchone()
            if last_old is None:
                return 0
            through = last_old if first_active is None else min(last_old, first_active - 1)
            if through <= position.oldest:
                return 0
            deleted = conn.execute(
                "DELETE FROM orderflow_events WHERE location = ? AND seq <= ?", (location, through)
            ).rowcount
            conn.execute(
                "DELETE FROM orderflow_idempotency WHERE location = ? AND created_at < ?",
                (location, cutoff),
            )
            conn.execute(
                "UPDATE orderflow_locations SET oldest = ? WHERE location = ?", (through, location)
            )
        logger.info("pruned %d events of location %r through seq %d", deleted, location, through)
        return deleted

    def new_epoch(self, location: str) -> str:
        epoch = secrets.token_hex(8)
        with self.write() as tx:
            tx.lock_location(location)
            self._writer_connection().execute(
                "UPDATE orderflow_locations SET epoch = ? WHERE location = ?", (epoch, location)
            )
        logger.warning(
            "location %r has a new epoch %s; screens will take a snapshot", location, epoch
        )
        return epoch
