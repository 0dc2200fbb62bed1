"""PostgreSQL storage: the production adapter, on psycopg 3 and psycopg_pool.

Tables live in their own schema (default ``orderflow``) with their own
migration table, so a host application's Alembic or Django migrations never
see them. Every statement names the schema, whatever the connection's
``search_path`` is.

Writers of one location are serialised by that location's counter row in
``locations``: a write transaction (READ COMMITTED) takes ``SELECT ... FOR
UPDATE`` on it before it reads anything the change depends on, then writes
the order, the new head and the event. Writers of different locations lock
different rows, so neither waits for the other's lock. Because the next writer of a
location gets the lock only after the previous one has committed, commit
order equals seq order.

Each round trip makes the caller wait for the network and for the server
process to wake up, so a write transaction runs in pipeline mode: ``BEGIN`` goes out with the lock and the
reads (one round trip), and ``save`` only queues its statements, which go
out with ``COMMIT`` when the block exits (the second round trip). As a
consequence an error in a statement queued by ``save`` (an order id that is
taken, for example) may be raised when the block commits, or by the next
call in the same transaction, instead of by ``save`` itself. Nothing is
committed in either case.

Reads that must agree with a head (snapshot, events since a cursor) are
single statements, so they see one snapshot of the database.

URL: ``postgresql://user:password@host:port/dbname?schema=orderflow&pool_min=1
&pool_max=10&pool_timeout=5&lock_timeout=5000&statement_timeout=30000``.
Those six options belong to orderflow and are removed before the URL reaches
libpq; every other query option must be a libpq connection parameter
(``connect_timeout``, ``sslmode``, ``application_name``...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import select
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import pq, sql
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from psycopg_pool.base import AttemptWithBackoff

from .._logging import RateLimitedLog
from ..digest import digest_of
from ..errors import (
    ConfigurationError,
    HistoryTruncated,
    IdConflict,
    OrderflowError,
    StorageBusy,
    StorageError,
    StorageUnavailable,
    TransactionAborted,
    UnknownOutcome,
)
from ..models import Event, EventPage, Item, LogPosition, Order, Snapshot, dumps
from . import redact_url
from .base import Change, LockedLocation, LockedOrder, StoredResult

__all__ = ["PostgresOptions", "PostgresStorage", "split_url", "translate_error"]

logger = logging.getLogger(__name__)

Connection = psycopg.Connection[TupleRow]

DEFAULT_SCHEMA = "orderflow"
DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 10
DEFAULT_POOL_TIMEOUT = 5.0
DEFAULT_LOCK_TIMEOUT = 5000
DEFAULT_STATEMENT_TIMEOUT = 30000
DEFAULT_CONNECT_TIMEOUT = 5
DEFAULT_APPLICATION_NAME = "orderflow"

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")

# The SQLSTATE that require_one_row() raises; class "OF" is not used by PostgreSQL.
_ROW_CHECK_FAILED = "OF001"

# SQLSTATEs of errors that a retry can get past: the transaction lost a race
# for a lock or ran too long.
_BUSY_STATES = {
    "55P03": "a lock wait timed out (lock_timeout)",
    "40P01": "a deadlock was detected",
    "40001": "a serialization failure occurred",
    "57014": "a statement was canceled (statement_timeout)",
}

# SQLSTATEs that mean the session is gone: the server is shutting down or
# crashed, or the connection failed (class 08).
_LOST_STATES = {"57P01", "57P02", "57P03"}


# Configuration.


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """The orderflow-specific options of a PostgreSQL URL.

    Times are in seconds for ``pool_timeout`` and in milliseconds for
    ``lock_timeout`` and ``statement_timeout`` (0 turns a timeout off).
    """

    schema: str = DEFAULT_SCHEMA
    pool_min: int = DEFAULT_POOL_MIN
    pool_max: int = DEFAULT_POOL_MAX
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    lock_timeout: int = DEFAULT_LOCK_TIMEOUT
    statement_timeout: int = DEFAULT_STATEMENT_TIMEOUT


_OPTION_NAMES = tuple(PostgresOptions.__dataclass_fields__)


def _libpq_keywords() -> frozenset[str]:
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def split_url(url: str) -> tuple[str, PostgresOptions]:
    """Split a PostgreSQL URL into the libpq URL and orderflow's options.

    Raises ``ConfigurationError`` naming an option that neither orderflow
    nor libpq accepts, or a value that is out of range.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing the port raises ValueError for a bad one)
    except ValueError as exc:
        # The URL cannot be parsed, so its password cannot be masked: leave it out.
        raise ConfigurationError(f"invalid PostgreSQL URL: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r}")

    ours: dict[str, str] = {}
    passed: list[tuple[str, str]] = []
    known = _libpq_keywords()
    for key, value in _query_pairs(parts.query):
        if key in _OPTION_NAMES:
            ours[key] = value
        elif key in known:
            passed.append((key, value))
        else:
            raise ConfigurationError(
                f"unknown PostgreSQL URL option {key!r}; orderflow takes "
                f"{', '.join(_OPTION_NAMES)}, and any libpq connection parameter "
                "such as connect_timeout or sslmode"
            )

    options = _parse_options(ours)
    libpq_url = urlunsplit(parts._replace(query=urlencode(passed, quote_via=quote)))
    try:
        psycopg.conninfo.conninfo_to_dict(libpq_url)
    except psycopg.Error as exc:
        message = _first_line(exc)
        if parts.password:
            message = message.replace(parts.password, "***")
        raise ConfigurationError(f"invalid PostgreSQL URL {redact_url(url)!r}: {message}") from None
    return libpq_url, options


def _query_pairs(query: str) -> list[tuple[str, str]]:
    # libpq decodes %XX but, unlike HTML forms, keeps '+' as it is.
    pairs = []
    for field in query.split("&"):
        if field:
            key, _, value = field.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _parse_options(values: dict[str, str]) -> PostgresOptions:
    schema = values.get("schema", DEFAULT_SCHEMA)
    if not _SCHEMA_NAME.match(schema) or schema.lower().startswith("pg_"):
        raise ConfigurationError(
            f"schema={schema!r} is not a valid schema name; use 1 to 63 letters, digits "
            "or underscores, starting with a letter or underscore and not with 'pg_'"
        )
    pool_min = _whole_number(values, "pool_min", DEFAULT_POOL_MIN, minimum=0)
    pool_max = _whole_number(values, "pool_max", DEFAULT_POOL_MAX, minimum=1)
    if pool_max < pool_min:
        raise ConfigurationError(f"pool_max={pool_max} must not be less than pool_min={pool_min}")
    text = values.get("pool_timeout")
    pool_timeout = DEFAULT_POOL_TIMEOUT
    if text is not None:
        try:
            pool_timeout = float(text)
        except ValueError:
            pool_timeout = -1.0
        if not 0 < pool_timeout < 3600:
            raise ConfigurationError(
                f"pool_timeout={text!r} must be a number of seconds above 0 and below 3600"
            )
    return PostgresOptions(
        schema=schema,
        pool_min=pool_min,
        pool_max=pool_max,
        pool_timeout=pool_timeout,
        lock_timeout=_whole_number(values, "lock_timeout", DEFAULT_LOCK_TIMEOUT),
        statement_timeout=_whole_number(values, "statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
    )


def _whole_number(values: dict[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    text = values.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or int(text) < minimum:
        raise ConfigurationError(f"{name}={text!r} must be a whole number of at least {minimum}")
    return int(text)


# Schema and statements.


def _migrations(schema: sql.Identifier) -> list[tuple[str, list[sql.Composed]]]:
    """Return the migrations in order: a name and the statements that apply it."""

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(s=schema)

    initial = [
        q(
            """
            CREATE TABLE {s}.locations (
                location text PRIMARY KEY,
                epoch text NOT NULL,
                head bigint NOT NULL,
                oldest bigint NOT NULL,
                created_at timestamptz NOT NULL
            )
            """
        ),
        q(
            """
            CREATE TABLE {s}.orders (
                id text CONSTRAINT orders_pkey PRIMARY KEY,
                location text NOT NULL,
                state text NOT NULL,
                version integer NOT NULL,
                active boolean NOT NULL,
                items json NOT NULL,
                meta json NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                created_seq bigint NOT NULL
            )
            """
        ),
        q("CREATE INDEX orders_active ON {s}.orders (location, created_seq) WHERE active"),
        q(
            """
            CREATE TABLE {s}.events (
                location text NOT NULL,
                seq bigint NOT NULL,
                order_id text NOT NULL,
                kind text NOT NULL,
                from_state text,
                to_state text NOT NULL,
                version integer NOT NULL,
                at timestamptz NOT NULL,
                actor text,
                reason text,
                body text NOT NULL,
                PRIMARY KEY (location, seq)
            )
            """
        ),
        q("CREATE INDEX events_order ON {s}.events (order_id, seq)"),
        q(
            """
            CREATE TABLE {s}.idempotency (
                location text NOT NULL,
                key text NOT NULL,
                fingerprint text NOT NULL,
                response text NOT NULL,
                created_at timestamptz NOT NULL,
                PRIMARY KEY (location, key)
            )
            """
        ),
        # A pipelined UPDATE cannot have its row count checked before COMMIT
        # is sent behind it, so the check runs in the server and aborts the
        # transaction with its own SQLSTATE.
        q(
            """
            CREATE FUNCTION {s}.require_one_row(actual bigint, detail text) RETURNS void
            LANGUAGE plpgsql AS $$
            BEGIN
                IF actual <> 1 THEN
                    RAISE EXCEPTION USING ERRCODE = 'OF001', MESSAGE = detail;
                END IF;
            END
            $$
            """
        ),
    ]
    return [("0001_initial", initial)]


_ORDER_COLUMNS = "id, location, state, version, items, meta, created_at, updated_at"
_ORDER_COLUMNS_OF_O = ", ".join("o." + name for name in _ORDER_COLUMNS.split(", "))


@dataclass(frozen=True, slots=True)
class _Statements:
    """Every statement of the adapter, rendered once for one schema."""

    insert_location: bytes
    lock_location: bytes
    lock_order_location: bytes
    select_order: bytes
    select_order_and_key: bytes
    select_key: bytes
    save_created: bytes
    save_transitioned: bytes
    save_updated: bytes
    insert_key: bytes
    select_position: bytes
    snapshot: bytes
    events_since: bytes
    order_history: bytes
    locations: bytes
    prune_bounds: bytes
    delete_events: bytes
    delete_keys: bytes
    set_oldest: bytes
    set_epoch: bytes

    @classmethod
    def for_schema(cls, schema: str) -> _Statements:
        identifier = sql.Identifier(schema)

        def q(text: str) -> bytes:
            return sql.SQL(text).format(s=identifier).as_bytes(None)

        # save() sends one statement per change: the order row, the new head
        # and the event are written by data-modifying CTEs of one statement.
        append_event = (
            "head AS (UPDATE {s}.locations SET head = %(seq)s WHERE location = %(location)s),"
            " event AS (INSERT INTO {s}.events (location, seq, order_id, kind, from_state,"
            " to_state, version, at, actor, reason, body) VALUES (%(location)s, %(seq)s, %(id)s,"
            " %(kind)s, %(from_state)s, %(to_state)s, %(event_version)s, %(at)s, %(actor)s,"
            " %(reason)s, %(body)s))"
        )
        check = " SELECT {s}.require_one_row(count(*), %(detail)s) FROM changed"
        return cls(
            insert_location=q(
                "INSERT INTO {s}.locations (location, epoch, head, oldest, created_at)"
                " VALUES (%s, %s, 0, 0, now()) ON CONFLICT (location) DO NOTHING"
            ),
            lock_location=q(
                "SELECT epoch, head, oldest FROM {s}.locations WHERE location = %s FOR UPDATE"
            ),
            # An order never moves between locations, so the subquery may read
            # it before the lock is granted.
            lock_order_location=q(
                "SELECT location, epoch, head, oldest FROM {s}.locations WHERE location ="
                " (SELECT location FROM {s}.orders WHERE id = %s) FOR UPDATE"
            ),
            select_order=q(f"SELECT {_ORDER_COLUMNS} FROM {{s}}.orders WHERE id = %s"),
            select_order_and_key=q(
                f"SELECT {_ORDER_COLUMNS_OF_O}, k.fingerprint, k.response FROM {{s}}.orders AS o"
                " LEFT JOIN {s}.idempotency AS k ON k.location = o.location AND k.key = %s"
                " WHERE o.id = %s"
            ),
            select_key=q(
                "SELECT fingerprint, response FROM {s}.idempotency WHERE location = %s AND key = %s"
            ),
            save_created=q(
                "WITH "
                + append_event
                + " INSERT INTO {s}.orders (id, location, state, version, active, items, meta,"
                " created_at, updated_at, created_seq) VALUES (%(id)s, %(location)s, %(state)s,"
                " %(version)s, %(active)s, %(items)s, %(meta)s, %(created_at)s, %(updated_at)s,"
                " %(seq)s)"
            ),
            save_transitioned=q(
                "WITH changed AS (UPDATE {s}.orders SET state = %(state)s, version = %(version)s,"
                " active = %(active)s, updated_at = %(updated_at)s WHERE id = %(id)s"
                " AND version = %(previous_version)s RETURNING 1), " + append_event + check
            ),
            save_updated=q(
                "WITH changed AS (UPDATE {s}.orders SET state = %(state)s, version = %(version)s,"
                " active = %(active)s, items = %(items)s, meta = %(meta)s,"
                " updated_at = %(updated_at)s"
                " WHERE id = %(id)s AND version = %(previous_version)s RETURNING 1), "
                + append_event
                + check
            ),
            insert_key=q(
                "INSERT INTO {s}.idempotency (location, key, fingerprint, response, created_at)"
                " VALUES (%s, %s, %s, %s, %s)"
            ),
            select_position=q("SELECT epoch, head, oldest FROM {s}.locations WHERE location = %s"),
            # One statement reads from one snapshot, so the orders agree with the head.
            snapshot=q(
                "SELECT l.epoch, l.head, o.id, o.location, o.state, o.version, o.items, o.meta,"
                " o.created_at, o.updated_at FROM {s}.locations AS l LEFT JOIN {s}.orders AS o"
                " ON o.location = l.location AND o.active WHERE l.location = %s"
                " ORDER BY o.created_seq"
            ),
            events_since=q(
                "SELECT l.epoch, l.head, l.oldest, e.body FROM {s}.locations AS l"
                " LEFT JOIN LATERAL (SELECT seq, body FROM {s}.events WHERE location = l.location"
                " AND seq > %s ORDER BY seq LIMIT %s) AS e ON true WHERE l.location = %s"
                " ORDER BY e.seq"
            ),
            order_history=q(
                "SELECT e.body FROM {s}.orders AS o LEFT JOIN {s}.events AS e"
                " ON e.order_id = o.id WHERE o.id = %s ORDER BY e.seq"
            ),
            locations=q(
                "SELECT location, epoch, head, oldest FROM {s}.locations ORDER BY location"
            ),
            prune_bounds=q(
                "SELECT (SELECT max(seq) FROM {s}.events WHERE location = %s AND at < %s),"
                " (SELECT min(created_seq) FROM {s}.orders WHERE location = %s AND active)"
            ),
            delete_events=q(
                "WITH deleted AS (DELETE FROM {s}.events WHERE location = %s AND seq <= %s"
                " RETURNING 1) SELECT count(*) FROM deleted"
            ),
            delete_keys=q("DELETE FROM {s}.idempotency WHERE location = %s AND created_at < %s"),
            set_oldest=q("UPDATE {s}.locations SET oldest = %s WHERE location = %s"),
            set_epoch=q("UPDATE {s}.locations SET epoch = %s WHERE location = %s"),
        )


def _order_from_row(row: Sequence[Any]) -> Order:
    return Order(
        id=row[0],
        location=row[1],
        state=row[2],
        version=row[3],
        items=tuple(Item.from_dict(item) for item in row[4]),
        meta=row[5],
        created_at=row[6].astimezone(UTC),
        updated_at=row[7].astimezone(UTC),
    )


def _stored_result(row: Sequence[Any] | None) -> StoredResult | None:
    if row is None:
        return None
    return StoredResult(row[0], Order.from_dict(json.loads(row[1])))


def _migration_lock_key(schema: str) -> int:
    """Return the advisory lock key that serialises migrations of ``schema``."""
    digest = hashlib.sha256(b"orderflow migrations\n" + schema.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# Errors.


def translate_error(
    exc: Exception,
    *,
    where: str,
    committing: bool = False,
    order_id: str | None = None,
    conn: Connection | None = None,
) -> OrderflowError:
    """Return the orderflow error for a psycopg or psycopg_pool exception.

    ``committing`` is true when the failed round trip carried COMMIT, so a
    lost connection leaves the outcome unknown. ``order_id`` is the id of a
    new order whose INSERT was in flight, for ``IdConflict``.
    """
    if isinstance(exc, PoolTimeout):
        return StorageUnavailable(
            f"no connection to PostgreSQL {where} became available ({exc}); the server may "
            "be down, or raise pool_max or pool_timeout in the URL"
        )
    if isinstance(exc, PoolClosed):
        return StorageUnavailable(f"PostgreSQL storage {where} is closed")

    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    if (
        sqlstate == "23505"
        and order_id is not None
        and isinstance(exc, psycopg.Error)
        and exc.diag.constraint_name == "orders_pkey"
    ):
        return IdConflict(order_id)
    if sqlstate in _BUSY_STATES:
        return StorageBusy(
            f"PostgreSQL {where}: {_BUSY_STATES[sqlstate]} ({_first_line(exc)}); retry the request"
        )
    if sqlstate == _ROW_CHECK_FAILED:
        return StorageError(_first_line(exc))
    if _is_connection_loss(exc, sqlstate, conn):
        if committing:
            return UnknownOutcome(
                f"the connection to PostgreSQL {where} was lost while committing "
                f"({_first_line(exc)}); the change may or may not have been saved, so retry "
                "with the same idempotency key"
            )
        return StorageUnavailable(f"PostgreSQL {where} cannot be reached: {_first_line(exc)}")
    return StorageError(f"PostgreSQL {where} failed: {_first_line(exc)}")


def _is_connection_loss(exc: Exception, sqlstate: str | None, conn: Connection | None) -> bool:
    if conn is not None and conn.broken:
        return True
    if sqlstate is None:
        return isinstance(exc, psycopg.OperationalError)
    return sqlstate.startswith("08") or sqlstate in _LOST_STATES


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _socket_readable(conn: Connection) -> bool:
    fd = conn.pgconn.socket
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


# Writes.


class _PostgresWrite:
    """The write transaction handed to the engine by ``PostgresStorage.write``.

    The connection is in pipeline mode: statements are sent at once, and
    their results are read only when a caller needs them.
    """

    __slots__ = (
        "_conn",
        "_failure",
        "_pending",
        "_positions",
        "_statements",
        "_storage",
        "commit_sent",
        "pipeline",
    )

    def __init__(self, storage: PostgresStorage, conn: Connection) -> None:
        self._storage = storage
        self._statements = storage._statements
        self._conn = conn
        self._positions: dict[str, LogPosition] = {}
        self._pending: Change | None = None
        self._failure: OrderflowError | None = None
        self.commit_sent = False
        self.pipeline: psycopg.Pipeline | None = None

    # The Storage protocol.

    def lock_location(self, location: str, idempotency_key: str | None = None) -> LockedLocation:
        # Locations are never deleted, so the INSERT of a missing counter row
        # is skipped for locations this process has seen.
        known = location in self._positions or location in self._storage._known_locations
        row, stored = self._lock_location(location, idempotency_key, insert=not known)
        if row is None:
            # The row was deleted behind orderflow's back; make it again.
            row, stored = self._lock_location(location, idempotency_key, insert=True)
        if row is None:
            raise StorageError(
                f"the counter row of location {location!r} cannot be created or locked; "
                "the database may have been changed outside orderflow"
            )
        position = LogPosition(location, row[0], row[1], row[2])
        self._positions[location] = position
        self._storage._known_locations.add(location)
        return LockedLocation(position, stored)

    def _lock_location(
        self, location: str, idempotency_key: str | None, *, insert: bool
    ) -> tuple[tuple[Any, ...] | None, StoredResult | None]:
        st = self._statements
        conn = self._conn
        with self._round_trip():
            created = None
            if insert:
                epoch = secrets.token_hex(8)
                created = conn.execute(st.insert_location, (location, epoch))
            locked = conn.execute(st.lock_location, (location,))
            keyed = None
            if idempotency_key is not None:
                keyed = conn.execute(st.select_key, (location, idempotency_key))
            row = locked.fetchone()
            stored = _stored_result(keyed.fetchone()) if keyed is not None else None
        if created is not None and created.rowcount == 1:
            logger.info("created event log of location %r with epoch %s", location, epoch)
        return row, stored

    def lock_order(self, order_id: str, idempotency_key: str | None = None) -> LockedOrder | None:
        st = self._statements
        conn = self._conn
        with self._round_trip():
            locked = conn.execute(st.lock_order_location, (order_id,))
            # A separate statement takes a new snapshot after the lock is
            # granted, so it reads the order (and the key) as the previous
            # writer left them.
            if idempotency_key is None:
                current = conn.execute(st.select_order, (order_id,))
            else:
                current = conn.execute(st.select_order_and_key, (idempotency_key, order_id))
            position_row = locked.fetchone()
            order_row = current.fetchone()
        if position_row is None or order_row is None:
            return None
        location = position_row[0]
        position = LogPosition(location, position_row[1], position_row[2], position_row[3])
        self._positions[location] = position
        stored = None
        if idempotency_key is not None and order_row[8] is not None:
            stored = _stored_result(order_row[8:10])
        return LockedOrder(position, _order_from_row(order_row), stored)

    def save(self, change: Change) -> None:
        self._check_usable()
        order = change.order
        event = change.event
        position = self._positions.get(order.location)
        if position is None:
            raise StorageError(
                f"location {order.location!r} was not locked in this transaction before save(); "
                "this is a bug in the caller of save()"
            )
        if event.seq != position.head + 1:
            raise StorageError(
                f"event seq {event.seq} does not follow head {position.head} of location "
                f"{order.location!r}; this is a bug in the caller of save()"
            )

        params: dict[str, Any] = {
            "id": order.id,
            "location": order.location,
            "state": order.state,
            "version": order.version,
            "active": change.active,
            "updated_at": order.updated_at,
            "seq": event.seq,
            "kind": event.kind,
            "from_state": event.from_state,
            "to_state": event.to_state,
            "event_version": event.version,
            "at": event.at,
            "actor": event.actor,
            "reason": event.reason,
            "body": event.to_json(),
        }
        st = self._statements
        if change.previous_version is None:
            statement = st.save_created
            params["created_at"] = order.created_at
        elif change.items_changed:
            statement = st.save_updated
        else:
            statement = st.save_transitioned
        if change.previous_version is None or change.items_changed:
            params["items"] = dumps([item.to_dict() for item in order.items])
            params["meta"] = dumps(dict(order.meta))
        if change.previous_version is not None:
            params["previous_version"] = change.previous_version
            params["detail"] = (
                f"order {order.id!r} was not at version {change.previous_version} when "
                "written, although its location was locked; the database may have been "
                "changed outside orderflow"
            )

        # NOTE: the statement's result is read with COMMIT's or the next lock
        # call's, so a taken order id raises IdConflict there, not here.
        self._pending = change
        with self._translated():
            self._conn.execute(statement, params)
            if change.idempotency_key is not None:
                self._conn.execute(
                    st.insert_key,
                    (
                        order.location,
                        change.idempotency_key,
                        change.fingerprint,
                        order.to_json(),
                        order.updated_at,
                    ),
                )
        self._positions[order.location] = LogPosition(
            position.location, position.epoch, event.seq, position.oldest
        )

    # Used by PostgresStorage.

    def begin(self) -> None:
        with self._translated():
            self._conn.execute(b"BEGIN ISOLATION LEVEL READ COMMITTED", prepare=False)

    def fetch_one(self, query: bytes, params: Sequence[Any]) -> tuple[Any, ...] | None:
        with self._round_trip():
            return self._conn.execute(query, params).fetchone()

    def queue(self, query: bytes, params: Sequence[Any]) -> None:
        self._check_usable()
        with self._translated():
            self._conn.execute(query, params)

    def queue_commit(self) -> None:
        """Send COMMIT behind the queued writes; the pipeline's exit waits for it."""
        self._check_usable()
        self.commit_sent = True
        with self._translated():
            self._conn.execute(b"COMMIT", prepare=False)

    def queue_rollback(self) -> None:
        """Send ROLLBACK behind the queued statements, unless a database error needs more.

        After a database error the server has skipped the rest of the
        pipeline. psycopg may then believe that a statement prepared in the
        skipped part exists, so ``PostgresStorage._release`` rolls back with
        ``Connection.rollback()``, which also makes psycopg forget them.
        """
        conn = self._conn
        if conn.closed:
            return
        if self.pipeline is not None and (self._failure is not None or self._pending is not None):
            # Read the results of save(): they tell whether an error came back.
            try:
                self.pipeline.sync()
            except psycopg.Error as exc:
                logger.debug("error read before rollback on %s: %s", self._storage.url, exc)
                self._failure = self._failure or self.translate(exc)
        if self._failure is not None:
            return
        try:
            conn.execute(b"ROLLBACK", prepare=False)
        except psycopg.Error as exc:
            logger.warning(
                "rolling back a write transaction on %s failed; the pool resets or discards "
                "the connection: %s",
                self._storage.url,
                _first_line(exc),
            )

    def translate(self, exc: psycopg.Error) -> OrderflowError:
        pending = self._pending
        order_id = pending.order.id if pending and pending.previous_version is None else None
        return translate_error(
            exc,
            where=self._storage.url,
            committing=self.commit_sent,
            order_id=order_id,
            conn=self._conn,
        )

    # Helpers.

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            error = self.translate(exc)
            if self._failure is None:
                self._failure = error
            raise error from exc

    @contextmanager
    def _round_trip(self) -> Iterator[None]:
        self._check_usable()
        with self._translated():
            yield
        # The writes of an earlier save() came back with this round trip.
        self._pending = None

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise TransactionAborted(
                f"an earlier statement in this transaction failed ({self._failure}); "
                "leave the transaction block so it rolls back, then retry"
            ) from self._failure


# The adapter.


class _CappedBackoff(AttemptWithBackoff):
    """Reconnection delays that double from about 1 s but never exceed 2 s."""

    MAX_DELAY = 2.0

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.MAX_DELAY)


class _QuickReconnectPool(ConnectionPool[Connection]):
    """A pool that keeps retrying a lost server every 2 s at most.

    psycopg_pool doubles the delay between reconnection attempts without a
    cap (1, 2, 4 ... 256 s), so after an outage of a minute the pool could
    wait another minute before it noticed that the server was back.
    """

    # NOTE: this overrides a private method of psycopg_pool (checked with
    # psycopg-pool 3.3); a release that renames it only loses the cap.
    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        if attempt is None:
            attempt = _CappedBackoff(timeout=self.reconnect_timeout)
        super()._add_connection(attempt, growing)


class PostgresStorage:
    """Storage in a PostgreSQL database, shared by any number of processes and nodes.

    Build it with ``PostgresStorage.from_url``. ``open()`` creates or
    migrates the schema and starts the connection pool; ``close()`` stops it.
    """

    def __init__(self, conninfo: str, options: PostgresOptions | None = None, *, url: str) -> None:
        self._conninfo = conninfo
        self._options = options or PostgresOptions()
        self._url = redact_url(url)
        self._statements = _Statements.for_schema(self._options.schema)
        self._pool: ConnectionPool[Connection] | None = None
        self._known_locations: set[str] = set()
        self._reconnects = RateLimitedLog(logger)
        parsed = psycopg.conninfo.conninfo_to_dict(conninfo)
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in parsed:
            self._connect_kwargs["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        if "application_name" not in parsed:
            self._connect_kwargs["application_name"] = DEFAULT_APPLICATION_NAME

    @classmethod
    def from_url(cls, url: str) -> PostgresStorage:
        """Build storage from a ``postgresql://`` or ``postgres://`` URL (see the module doc)."""
        conninfo, options = split_url(url)
        return cls(conninfo, options, url=url)

    @property
    def url(self) -> str:
        return self._url

    @property
    def schema(self) -> str:
        return self._options.schema

    @property
    def options(self) -> PostgresOptions:
        return self._options

    # Opening and closing.

    def open(self) -> None:
        if self._pool is not None:
            return
        self._migrate()
        options = self._options
        pool: ConnectionPool[Connection] = _QuickReconnectPool(
            self._conninfo,
            kwargs=self._connect_kwargs,
            min_size=options.pool_min,
            max_size=options.pool_max,
            timeout=options.pool_timeout,
            configure=self._configure,
            name=f"orderflow:{options.schema}",
            open=False,
        )
        try:
            pool.open(wait=options.pool_min > 0, timeout=options.pool_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise translate_error(exc, where=self.url) from exc
        self._pool = pool
        logger.info(
            "opened PostgreSQL storage %s (schema %s, %d to %d connections)",
            self.url,
            options.schema,
            options.pool_min,
            options.pool_max,
        )

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()
        logger.info("closed PostgreSQL storage %s", self.url)

    def _configure(self, conn: Connection) -> None:
        conn.execute(
            "SELECT set_config('lock_timeout', %s, false),"
            " set_config('statement_timeout', %s, false)",
            (f"{self._options.lock_timeout}ms", f"{self._options.statement_timeout}ms"),
        )

    def _migrate(self) -> None:
        try:
            with (
                psycopg.connect(self._conninfo, **self._connect_kwargs) as conn,
                conn.transaction(),
            ):
                applied = self._apply_migrations(conn)
        except psycopg.Error as exc:
            raise translate_error(exc, where=self.url) from exc
        if applied:
            logger.info(
                "migrated PostgreSQL schema %s on %s: applied %s",
                self.schema,
                self.url,
                ", ".join(applied),
            )

    def _apply_migrations(self, conn: Connection) -> list[str]:
        """Create the schema if needed and apply pending migrations; return their names."""
        schema = self.schema
        identifier = sql.Identifier(schema)

        # Two nodes that open at once queue here; the second one finds the
        # schema done.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_migration_lock_key(schema),))

        # CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
        # database even when the schema exists, so look first.
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if exists.fetchone() is None:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(identifier))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.migrations"
                " (name text PRIMARY KEY, applied_at timestamptz NOT NULL)"
            ).format(identifier)
        )
        done = conn.execute(sql.SQL("SELECT name FROM {}.migrations").format(identifier))
        already = {row[0] for row in done.fetchall()}

        applied = []
        for name, statements in _migrations(identifier):
            if name in already:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                sql.SQL("INSERT INTO {}.migrations (name, applied_at) VALUES (%s, now())").format(
                    identifier
                ),
                (name,),
            )
            applied.append(name)
        return applied

    # Connections.

    def _acquire(self) -> tuple[ConnectionPool[Connection], Connection]:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable(
                f"PostgreSQL storage {self.url} is not open; call open() first"
            )
        # A connection that sat in the pool while the server restarted is
        # dead. Checking the socket costs no round trip; dead ones are
        # closed, which makes the pool open a replacement.
        for _ in range(self._options.pool_max + 1):
            try:
                conn = pool.getconn()
            except psycopg.Error as exc:
                raise translate_error(exc, where=self.url) from exc
            problem = self._check_idle(conn)
            if problem is None:
                return pool, conn
            self._reconnects.log(
                logging.WARNING,
                "reconnect",
                "discarding a pooled connection to %s that the server closed (%s); the pool "
                "opens a new one",
                self.url,
                problem,
            )
            conn.close()
            pool.putconn(conn)
        raise StorageUnavailable(
            f"every pooled connection to PostgreSQL {self.url} was closed by the server; retry"
        )

    @staticmethod
    def _check_idle(conn: Connection) -> str | None:
        """Return why a connection taken from the pool cannot be used, or None if it can."""
        if conn.closed:
            return "the connection is closed"
        if not _socket_readable(conn):
            return None
        # An idle connection received data, usually the server's last error
        # message before it closed the socket. A trivial query finds out.
        try:
            conn.execute(b"", prepare=False)
        except psycopg.Error as exc:
            return _first_line(exc)
        return None

    def _release(self, pool: ConnectionPool[Connection], conn: Connection) -> None:
        if not conn.closed and conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            # A database error left the transaction open. Connection.rollback()
            # also deallocates the prepared statements, which the skipped part
            # of a pipeline may have left psycopg wrong about.
            try:
                conn.rollback()
            except psycopg.Error as exc:
                logger.warning(
                    "rolling back a returned connection to %s failed, so it is discarded: %s",
                    self.url,
                    _first_line(exc),
                )
                conn.close()
        pool.putconn(conn)

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        pool, conn = self._acquire()
        try:
            yield conn
        except psycopg.Error as exc:
            raise translate_error(exc, where=self.url, conn=conn) from exc
        finally:
            self._release(pool, conn)

    # Writes.

    @contextmanager
    def write(self, on_commit: Callable[[], None] | None = None) -> Iterator[_PostgresWrite]:
        pool, conn = self._acquire()
        tx = _PostgresWrite(self, conn)
        try:
            try:
                with conn.pipeline() as pipeline:
                    tx.pipeline = pipeline
                    try:
                        tx.begin()
                        yield tx
                        tx.queue_commit()
                    except BaseException:
                        tx.queue_rollback()
                        raise
                # Leaving the pipeline waited for every result, COMMIT's too.
            except psycopg.Error as exc:
                raise tx.translate(exc) from exc
        finally:
            self._release(pool, conn)
        if on_commit is not None:
            on_commit()

    # Reads.

    def get_order(self, order_id: str) -> Order | None:
        with self._connection() as conn:
            row = conn.execute(self._statements.select_order, (order_id,)).fetchone()
        return None if row is None else _order_from_row(row)

    def order_history(self, order_id: str) -> list[Event] | None:
        with self._connection() as conn:
            rows = conn.execute(self._statements.order_history, (order_id,)).fetchall()
        if not rows:
            return None
        return [Event.from_json(row[0]) for row in rows if row[0] is not None]

    def position(self, location: str) -> LogPosition:
        with self._connection() as conn:
            row = conn.execute(self._statements.select_position, (location,)).fetchone()
        if row is not None:
            return LogPosition(location, row[0], row[1], row[2])
        with self.write() as tx:
            return tx.lock_location(location).position

    def snapshot(self, location: str) -> Snapshot:
        with self._connection() as conn:
            rows = conn.execute(self._statements.snapshot, (location,)).fetchall()
        if not rows:
            self.position(location)
            return self.snapshot(location)
        orders = tuple(_order_from_row(row[2:]) for row in rows if row[2] is not None)
        return Snapshot(
            location=location,
            epoch=rows[0][0],
            head=rows[0][1],
            digest=digest_of((order.id, order.version) for order in orders),
            orders=orders,
        )

    def events_since(self, location: str, since: int, limit: int) -> EventPage:
        with self._connection() as conn:
            rows = conn.execute(self._statements.events_since, (since, limit, location)).fetchall()
        if not rows:
            self.position(location)
            return self.events_since(location, since, limit)
        epoch, head, oldest, _ = rows[0]
        if since < oldest:
            raise HistoryTruncated(location, since, oldest)
        events = tuple(Event.from_json(row[3]) for row in rows if row[3] is not None)
        return EventPage(location, epoch, head, events)

    def locations(self) -> list[LogPosition]:
        with self._connection() as conn:
            rows = conn.execute(self._statements.locations).fetchall()
        return [LogPosition(*row) for row in rows]

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute(b"SELECT 1").fetchone()

    # Maintenance.

    def prune(self, location: str, before: datetime) -> int:
        st = self._statements
        with self.write() as tx:
            position = tx.lock_location(location).position
            bounds = tx.fetch_one(st.prune_bounds, (location, before, location))
            last_old, first_active = bounds if bounds is not None else (None, None)
            if last_old is None:
                return 0
            through = last_old if first_active is None else min(last_old, first_active - 1)
            if through <= position.oldest:
                return 0
            counted = tx.fetch_one(st.delete_events, (location, through))
            deleted = counted[0] if counted is not None else 0
            tx.queue(st.delete_keys, (location, before))
            tx.queue(st.set_oldest, (through, location))
        logger.info("pruned %d events of location %r through seq %d", deleted, location, through)
        return deleted

    def new_epoch(self, location: str) -> str:
        epoch = secrets.token_hex(8)
        with self.write() as tx:
            tx.lock_location(location)
            tx.queue(self._statements.set_epoch, (epoch, location))
        logger.warning(
            "location %r has a new epoch %s; screens will take a snapshot", location, epoch
        )
        return epoch
