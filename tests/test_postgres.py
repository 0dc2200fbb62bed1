"""PostgreSQL adapter: URL handling, error mapping, concurrency and faults.

Concurrency tests use the shared server named by ORDERFLOW_TEST_POSTGRES_URL,
each in a schema of its own. Fault tests (marked ``fault``) start a private
server with ``TemporaryPostgres`` and stop, restart, kill or cut it; they
need the PostgreSQL server binaries under /usr/lib/postgresql.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import PoolClosed, PoolTimeout

from orderflow import (
    ConfigurationError,
    Engine,
    Event,
    IdConflict,
    StorageBusy,
    StorageError,
    StorageUnavailable,
    UnknownOutcome,
    VersionConflict,
)
from orderflow.storage import postgres as pg_storage
from orderflow.storage import storage_from_url
from orderflow.storage.postgres import PostgresStorage, split_url, translate_error
from tests.conftest import REQUIRE_SERVICES, service_url
from tests.pg_support import (
    TemporaryPostgres,
    burst_worker,
    find_bindir,
    fresh_schema_url,
    libpq_url,
    schema_of,
    with_options,
)

pytestmark = pytest.mark.postgres

PIZZA = [{"name": "Margherita", "quantity": 1}]
T = TypeVar("T")


@pytest.fixture
def pg_url() -> Iterator[str]:
    base = service_url("ORDERFLOW_TEST_POSTGRES_URL", "PostgreSQL")
    with fresh_schema_url(base) as url:
        yield url


@pytest.fixture(scope="module")
def server() -> Iterator[TemporaryPostgres]:
    bindir = find_bindir()
    if bindir is None:
        message = (
            "fault tests start their own PostgreSQL server and need its binaries under "
            "/usr/lib/postgresql/<version>/bin (apt-get install postgresql)"
        )
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    started = TemporaryPostgres(bindir)
    try:
        started.initdb()
        started.start()
        yield started
    finally:
        started.close()


@pytest.fixture
def server_url(server: TemporaryPostgres) -> Iterator[str]:
    if server.process is None or server.process.poll() is not None:
        server.start()
    with fresh_schema_url(server.url) as url:
        yield url


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll ``condition`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Worker(threading.Thread):
    """A thread that runs one call and keeps its result or exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


def all_events(engine: Engine, location: str) -> list[Event]:
    events: list[Event] = []
    while True:
        page = engine.events_since(events[-1].seq if events else 0, location=location, limit=500)
        if not page.events:
            return events
        events.extend(page.events)


def assert_log_consistent(engine: Engine, location: str) -> list[Event]:
    """Check seq 1..head with no gap, and that orders agree with their events."""
    head = engine.position(location).head
    events = all_events(engine, location)
    assert [event.seq for event in events] == list(range(1, head + 1))

    last: dict[str, Event] = {}
    for event in events:
        previous = last.get(event.order_id)
        expected_version = 1 if previous is None else previous.version + 1
        assert event.version == expected_version, event
        last[event.order_id] = event
    for order_id, event in last.items():
        assert engine.get(order_id) == event.order
    active = {order.id: order for order in engine.snapshot(location).orders}
    lifecycle = engine.lifecycle
    assert active == {key: e.order for key, e in last.items() if lifecycle.is_active(e.to_state)}
    return events


def backend_pids(url: str, condition: str, *, of_schema: bool = True) -> list[int]:
    """Return the pids of orderflow's sessions on ``url`` whose activity matches ``condition``.

    With ``of_schema``, only sessions whose current statement names the
    URL's schema count, which keeps other users of a shared server out.
    """
    query = sql.SQL(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'orderflow' AND " + condition
    ).format()
    if of_schema:
        query += sql.SQL(" AND position({} in query) > 0").format(sql.Literal(schema_of(url)))
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return [row[0] for row in conn.execute(query).fetchall()]


# URLs and options.


def test_url_options_stripped() -> None:
    conninfo, options = split_url(
        "postgresql://ana@db.example:5433/shop?schema=pos&pool_min=2&pool_max=5"
        "&pool_timeout=1.5&lock_timeout=100&statement_timeout=0&connect_timeout=3"
    )

    assert conninfo == "postgresql://ana@db.example:5433/shop?connect_timeout=3"
    assert options == pg_storage.PostgresOptions("pos", 2, 5, 1.5, 100, 0)


def test_url_postgres_scheme() -> None:
    storage = storage_from_url("postgres://ana@localhost/shop")

    assert isinstance(storage, PostgresStorage)
    assert storage.schema == "orderflow"


def test_url_keeps_plus() -> None:
    conninfo, _ = split_url("postgresql://h/db?options=-c%20a%3Db+c&schema=s")

    assert conninfo == "postgresql://h/db?options=-c%20a%3Db%2Bc"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        pytest.param("colour=blue", "colour", id="unknown"),
        pytest.param("schema=pg_catalog", "schema", id="reserved_schema"),
        pytest.param("schema=a-b", "schema", id="bad_schema"),
        pytest.param("pool_max=0", "pool_max", id="pool_max_zero"),
        pytest.param("pool_min=3&pool_max=2", "pool_max", id="pool_min_above_max"),
        pytest.param("pool_timeout=soon", "pool_timeout", id="pool_timeout_text"),
        pytest.param("lock_timeout=-1", "lock_timeout", id="lock_timeout_negative"),
    ],
)
def test_url_rejects(query: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        PostgresStorage.from_url(f"postgresql://ana:secret@localhost/shop?{query}")


def test_url_hides_password() -> None:
    storage = PostgresStorage.from_url("postgresql://ana:s3cret@localhost/shop?schema=pos")

    assert "s3cret" not in storage.url
    assert storage.url == "postgresql://ana:***@localhost/shop?schema=pos"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://ana:s3cret@[::1/shop", id="bad_host"),
        pytest.param("postgresql://ana:s3cret@localhost:port/shop", id="bad_port"),
        pytest.param("postgresql://ana:s3cret@localhost/sh%zzop", id="bad_escape"),
    ],
)
def test_bad_url_hides_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        PostgresStorage.from_url(url)

    assert "s3cret" not in str(caught.value)


# Error mapping.

MAPPED: list[tuple[type[Exception], bool, type[StorageError]]] = [
    (pg_errors.LockNotAvailable, False, StorageBusy),
    (pg_errors.DeadlockDetected, False, StorageBusy),
    (pg_errors.SerializationFailure, False, StorageBusy),
    (pg_errors.QueryCanceled, False, StorageBusy),
    (pg_errors.LockNotAvailable, True, StorageBusy),
    (pg_errors.AdminShutdown, False, StorageUnavailable),
    (pg_errors.AdminShutdown, True, UnknownOutcome),
    (pg_errors.CrashShutdown, False, StorageUnavailable),
    (pg_errors.CrashShutdown, True, UnknownOutcome),
    (pg_errors.CannotConnectNow, False, StorageUnavailable),
    (pg_errors.CannotConnectNow, True, UnknownOutcome),
    (pg_errors.ConnectionException, False, StorageUnavailable),
    (pg_errors.ConnectionException, True, UnknownOutcome),
    (pg_errors.ConnectionFailure, False, StorageUnavailable),
    (pg_errors.ConnectionFailure, True, UnknownOutcome),
    (pg_errors.ConnectionDoesNotExist, True, UnknownOutcome),
    (pg_errors.SqlclientUnableToEstablishSqlconnection, False, StorageUnavailable),
    (pg_errors.SqlserverRejectedEstablishmentOfSqlconnection, False, StorageUnavailable),
    (pg_errors.TransactionResolutionUnknown, True, UnknownOutcome),
    (pg_errors.ProtocolViolation, True, UnknownOutcome),
    (psycopg.OperationalError, False, StorageUnavailable),
    (psycopg.OperationalError, True, UnknownOutcome),
    (PoolTimeout, False, StorageUnavailable),
    (PoolClosed, False, StorageUnavailable),
    (pg_errors.UniqueViolation, False, StorageError),
    (pg_errors.InsufficientPrivilege, False, StorageError),
    (pg_errors.UndefinedTable, True, StorageError),
    (psycopg.InterfaceError, False, StorageError),
    (psycopg.ProgrammingError, False, StorageError),
    (psycopg.DatabaseError, True, StorageError),
]


@pytest.mark.parametrize(
    ("raised", "committing", "expected"),
    [
        pytest.param(raised, committing, expected, id=f"{raised.__name__}-commit={committing}")
        for raised, committing, expected in MAPPED
    ],
)
def test_error_mapping(
    raised: type[Exception], committing: bool, expected: type[StorageError]
) -> None:
    error = translate_error(raised("boom"), where="test", committing=committing)

    assert type(error) is expected
    assert error.status == 503


def test_error_mapping_complete() -> None:
    # Every psycopg class that the adapter maps by SQLSTATE is in the table.
    mapped_states = set(pg_storage._BUSY_STATES) | pg_storage._LOST_STATES
    classes = {
        value
        for value in vars(pg_errors).values()
        if isinstance(value, type) and issubclass(value, psycopg.Error)
    }
    mapped_classes = set()
    for cls in classes:
        state = cls.sqlstate
        if state is not None and (state in mapped_states or state.startswith("08")):
            mapped_classes.add(cls)
    tested = {raised for raised, _, _ in MAPPED}

    assert mapped_classes - tested == set()


def test_id_conflict_needs_orders_key() -> None:
    # A unique violation elsewhere is not an id conflict, even with an insert in flight.
    error = translate_error(pg_errors.UniqueViolation("boom"), where="test", order_id="A-1")

    assert type(error) is StorageError


def test_refused_connection(unused_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{unused_port}/test?connect_timeout=2"

    with pytest.raises(StorageUnavailable) as caught:
        Engine.open(url)

    assert caught.value.status == 503
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_pool_exhausted(pg_url: str) -> None:
    url = with_options(pg_url, pool_min="1", pool_max="1", pool_timeout="0.3")
    with Engine.open(url) as engine:
        holding = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with engine.transaction() as tx:
                tx.create(PIZZA)
                holding.set()
                release.wait(30)

        holder = Worker(hold)
        holder.start()
        try:
            assert holding.wait(30)
            with pytest.raises(StorageUnavailable, match="no connection"):
                engine.get("A-1")
        finally:
            release.set()
            holder.join(30)
        assert holder.error is None


def test_lock_timeout_busy(pg_url: str) -> None:
    url = with_options(pg_url, lock_timeout="200")
    with Engine.open(url) as engine:
        engine.position("main")
        holding = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with engine.transaction() as tx:
                tx.create(PIZZA)
                holding.set()
                release.wait(30)

        holder = Worker(hold)
        holder.start()
        try:
            assert holding.wait(30)
            with pytest.raises(StorageBusy) as caught:
                engine.create(PIZZA)
        finally:
            release.set()
            holder.join(30)
        assert isinstance(caught.value.__cause__, pg_errors.LockNotAvailable)
        assert [event.seq for event in all_events(engine, "main")] == [1]


def test_deadlock_busy(pg_url: str) -> None:
    with Engine.open(pg_url) as engine:
        barrier = threading.Barrier(2, timeout=30)

        def cross(first: str, second: str) -> None:
            with engine.transaction() as tx:
                tx.create(PIZZA, location=first)
                barrier.wait()
                tx.create(PIZZA, location=second)

        workers = [Worker(lambda: cross("a", "b")), Worker(lambda: cross("b", "a"))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)

        errors = [worker.error for worker in workers if worker.error is not None]
        assert len(errors) == 1
        assert isinstance(errors[0], StorageBusy)
        assert isinstance(errors[0].__cause__, pg_errors.DeadlockDetected)
        assert engine.position("a").head + engine.position("b").head == 2


def test_reuse_after_aborted_pipeline(pg_url: str) -> None:
    # A failed statement makes the server skip the rest of the pipeline,
    # including statements that psycopg prepares on their fifth use. The
    # connection must not keep believing that those were prepared.
    with Engine.open(with_options(pg_url, pool_min="1", pool_max="1")) as engine:
        taken = engine.create(PIZZA, id="taken")
        for index in range(12):
            order = engine.create(PIZZA, idempotency_key=f"key-{index}")
            engine.transition(order.id, "CONFIRMED", idempotency_key=f"move-{index}")
            with pytest.raises(IdConflict):
                engine.create(PIZZA, id=taken.id, idempotency_key=f"again-{index}")

        assert [event.seq for event in all_events(engine, "main")] == list(range(1, 26))


def test_password_not_logged(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    # The shared server trusts loopback connections, so any password is accepted.
    parts = pg_url.split("@", 1)
    url = parts[0] + ":s3cret-pw@" + parts[1]
    caplog.set_level(logging.DEBUG)

    with Engine.open(url) as engine:
        engine.create(PIZZA)

    assert any(record.name == "orderflow.storage.postgres" for record in caplog.records)
    assert "s3cret-pw" not in caplog.text


# Concurrency on the shared server.


def test_processes_keep_seq(pg_url: str) -> None:
    rounds = 15
    locations = ("north", "south")
    with Engine.open(pg_url) as engine:
        for location in locations:
            engine.position(location)

        stop = threading.Event()
        seen: dict[str, list[int]] = {location: [] for location in locations}

        def follow(location: str) -> None:
            # Poll like a screen that has no broker: never skip, never repeat.
            cursor = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                page = engine.storage.events_since(location, cursor, 50)
                for event in page.events:
                    seen[location].append(event.seq)
                    cursor = event.seq
                if not page.events:
                    if stop.is_set() and cursor >= engine.position(location).head:
                        return
                    time.sleep(0.005)

        readers = [threading.Thread(target=follow, args=(loc,)) for loc in locations]
        for reader in readers:
            reader.start()
        context = multiprocessing.get_context("spawn")
        jobs = [(pg_url, locations[index % 2], rounds) for index in range(8)]
        try:
            with context.Pool(8) as pool:
                acknowledged = pool.starmap(burst_worker, jobs, chunksize=1)
        finally:
            stop.set()
            for reader in readers:
                reader.join(150)

        for location in locations:
            head = engine.position(location).head
            assert head == 4 * rounds * 3
            assert seen[location] == list(range(1, head + 1))
            assert_log_consistent(engine, location)
        kept = {
            (event.order_id, event.version)
            for location in locations
            for event in all_events(engine, location)
        }
        missing = {pair for batch in acknowledged for pair in batch} - kept
        assert missing == set()


def test_version_race(pg_url: str) -> None:
    racers = 8
    with Engine.open(with_options(pg_url, pool_max=str(racers))) as engine:
        order = engine.create(PIZZA)
        barrier = threading.Barrier(racers, timeout=30)

        def race() -> Any:
            barrier.wait()
            return engine.transition(order.id, "CONFIRMED", expected_version=1)

        workers = [Worker(race) for _ in range(racers)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)

        winners = [worker.result for worker in workers if worker.error is None]
        losers = [worker.error for worker in workers if worker.error is not None]
        assert len(winners) == 1
        assert all(isinstance(error, VersionConflict) for error in losers)
        assert {error.actual for error in losers if isinstance(error, VersionConflict)} == {2}
        assert [event.seq for event in all_events(engine, "main")] == [1, 2]


def test_locations_do_not_wait(pg_url: str) -> None:
    with Engine.open(with_options(pg_url, pool_max="4")) as engine:
        engine.position("a")
        engine.position("b")
        holding = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with engine.transaction() as tx:
                tx.create(PIZZA, location="a")
                holding.set()
                release.wait(30)

        holder = Worker(hold)
        other = Worker(lambda: engine.create(PIZZA, location="b"))
        same = Worker(lambda: engine.create(PIZZA, location="a"))
        holder.start()
        try:
            assert holding.wait(30)

            # A write to another location finishes while "a" stays locked.
            other.start()
            assert other.done.wait(10)
            assert other.error is None
            assert not holder.done.is_set()

            # A write to the same location waits for the lock instead.
            same.start()
            wait_for(
                lambda: backend_pids(pg_url, "wait_event_type = 'Lock'"),
                "the second writer of location a to wait for its lock",
            )
            assert not same.done.is_set()
        finally:
            release.set()
            holder.join(30)
        assert same.done.wait(30)
        assert same.error is None
        assert [event.seq for event in all_events(engine, "a")] == [1, 2]


# Faults on a server of the test's own.


def burst(engine: Engine, stop: threading.Event, location: str, log: dict[str, list[Any]]) -> None:
    """Create and confirm orders until ``stop``; record acknowledged changes and failures."""
    while not stop.is_set():
        try:
            order = engine.create(PIZZA, location=location)
            log["acknowledged"].append((order.id, order.version))
            order = engine.transition(order.id, "CONFIRMED")
            log["acknowledged"].append((order.id, order.version))
        except StorageError as exc:
            log["failures"].append(exc)
        except Exception as exc:
            log["unexpected"].append(exc)
            return


@pytest.mark.fault
def test_restart_mid_burst(server: TemporaryPostgres, server_url: str) -> None:
    url = with_options(server_url, pool_max="4", pool_timeout="1")
    log: dict[str, list[Any]] = {"acknowledged": [], "failures": [], "unexpected": []}
    with Engine.open(url) as engine:
        stop = threading.Event()
        writers = [
            threading.Thread(target=burst, args=(engine, stop, location, log))
            for location in ("north", "south", "north", "south")
        ]
        for writer in writers:
            writer.start()
        try:
            wait_for(lambda: len(log["acknowledged"]) >= 40, "writes before the restart")
            server.restart()
            resumed_from = len(log["acknowledged"])
            wait_for(
                lambda: len(log["acknowledged"]) >= resumed_from + 40,
                "writes to succeed again after the restart",
                timeout=60,
            )
        finally:
            stop.set()
            for writer in writers:
                writer.join(60)

        assert log["unexpected"] == []
        assert log["failures"] != []
        assert {error.status for error in log["failures"]} == {503}
        kept = set()
        for location in ("north", "south"):
            kept |= {(e.order_id, e.version) for e in assert_log_consistent(engine, location)}
        assert set(log["acknowledged"]) - kept == set()
        assert engine.create(PIZZA).version == 1


@pytest.mark.fault
def test_idle_connections_replaced(
    server: TemporaryPostgres, server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = with_options(server_url, pool_min="3", pool_max="3")
    with Engine.open(url) as engine:
        order = engine.create(PIZZA)
        server.restart()
        caplog.set_level(logging.WARNING, logger="orderflow.storage.postgres")

        # The first call after the restart already succeeds: dead pooled
        # connections are noticed and replaced before they are handed out.
        assert engine.get(order.id) == order

    assert "server closed" in caplog.text


@pytest.mark.fault
def test_crash_then_recover(server: TemporaryPostgres, server_url: str) -> None:
    url = with_options(server_url, pool_timeout="0.5")
    with Engine.open(url) as engine:
        order = engine.create(PIZZA)
        server.kill()

        with pytest.raises(StorageUnavailable):
            engine.transition(order.id, "CONFIRMED")

        server.start()

        def confirm() -> Any:
            try:
                return engine.transition(order.id, "CONFIRMED")
            except StorageUnavailable:
                return None

        moved = wait_for(confirm, "a transition after the crash", timeout=60)
        assert moved.version == 2


def terminate_during_commit(url: str, wait_event: str, call: Callable[[], Any]) -> Worker:
    """Run ``call`` in a thread and cut its connection while COMMIT waits on ``wait_event``."""
    worker = Worker(call)
    worker.start()
    pids = wait_for(
        # COMMIT does not name the schema; this server runs only this test.
        lambda: (
            backend_pids(url, f"wait_event = '{wait_event}'", of_schema=False)
            or worker.done.is_set()
        ),
        f"a COMMIT waiting on {wait_event}",
    )
    assert not worker.done.is_set(), worker.error
    assert isinstance(pids, list)
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    assert worker.done.wait(30)
    return worker


@pytest.mark.fault
def test_commit_lost_not_applied(server_url: str) -> None:
    # A deferred constraint trigger makes COMMIT sleep, so the connection is
    # cut while COMMIT runs and before it has committed.
    schema = sql.Identifier(schema_of(server_url))
    with Engine.open(server_url) as engine:
        order = engine.create(PIZZA)
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {}.slow_commit() RETURNS trigger LANGUAGE plpgsql AS"
                    " $$ BEGIN PERFORM pg_sleep(20); RETURN NULL; END $$"
                ).format(schema)
            )
            conn.execute(
                sql.SQL(
                    "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {}.events"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {}.slow_commit()"
                ).format(schema, schema)
            )

        worker = terminate_during_commit(
            server_url,
            "PgSleep",
            lambda: engine.transition(order.id, "CONFIRMED", idempotency_key="lost-1"),
        )

        assert isinstance(worker.error, UnknownOutcome)
        assert worker.error.status == 503
        with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TRIGGER slow_commit ON {}.events").format(schema))
        retried = engine.transition(order.id, "CONFIRMED", idempotency_key="lost-1")
        assert retried.version == 2
        assert [event.kind for event in engine.history(order.id)] == [
            "order.created",
            "order.transitioned",
        ]
        assert_log_consistent(engine, "main")


@pytest.mark.fault
def test_commit_lost_but_applied(server: TemporaryPostgres, server_url: str) -> None:
    # With a synchronous standby that never connects, COMMIT writes the
    # change durably and then waits for the standby. Cutting the connection
    # there leaves a committed change whose caller got no reply.
    with Engine.open(server_url) as engine:
        order = engine.create(PIZZA)
        set_standby(server, "orderflow_test_absent_standby")
        try:
            worker = terminate_during_commit(
                server_url,
                "SyncRep",
                lambda: engine.transition(order.id, "CONFIRMED", idempotency_key="lost-2"),
            )
        finally:
            set_standby(server, "")

        assert isinstance(worker.error, UnknownOutcome)
        retried = engine.transition(order.id, "CONFIRMED", idempotency_key="lost-2")
        assert retried.version == 2
        assert [event.version for event in engine.history(order.id)] == [1, 2]
        assert_log_consistent(engine, "main")


def set_standby(server: TemporaryPostgres, names: str) -> None:
    """Set synchronous_standby_names and wait until new sessions see it."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(names))
        )
        conn.execute("SELECT pg_reload_conf()")

    def applied() -> bool:
        with psycopg.connect(server.url, autocommit=True) as conn:
            row = conn.execute("SHOW synchronous_standby_names").fetchone()
        return row is not None and row[0] == names

    wait_for(applied, f"synchronous_standby_names to become {names!r}")


@pytest.mark.fault
def test_pid_is_postmaster(server: TemporaryPostgres) -> None:
    # stop() and kill() signal this pid, so it must be the server's own.
    with open(server.data / "postmaster.pid") as pid_file:
        assert int(pid_file.readline()) == server.pid
    assert os.path.exists(f"/proc/{server.pid}")


@pytest.mark.fault
def test_server_answers_503_while_database_down(
    server: TemporaryPostgres, server_url: str
) -> None:
    """The HTTP API reports the outage as 503 and recovers without a restart."""
    import anyio

    from orderflow.client import HttpClient
    from tests.server_support import running_server

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        # A short pool timeout makes calls during the outage fail fast.
        url = server_url + "&pool_timeout=1"
        async with running_server(url) as running, HttpClient(running.url) as http:
            order = await http.create_order([{"name": "Paella", "quantity": 2}])
            await anyio.to_thread.run_sync(server.stop)
            during = await http.request(
                "POST", f"/orders/{order['id']}/transitions", {"to": "CONFIRMED"}
            )
            seen["during_status"] = during.status
            seen["during_code"] = during.json()["code"]
            seen["health_status"] = (await http.request("GET", "/healthz")).status
            await anyio.to_thread.run_sync(server.start)

            async def transition_succeeds() -> dict[str, Any]:
                with anyio.fail_after(30):
                    while True:
                        response = await http.request(
                            "POST", f"/orders/{order['id']}/transitions", {"to": "CONFIRMED"}
                        )
                        if response.status == 200:
                            result: dict[str, Any] = response.json()
                            return result
                        await anyio.sleep(0.1)

            seen["after"] = await transition_succeeds()
            seen["health_after"] = (await http.request("GET", "/healthz")).status
        return seen

    seen = anyio.run(scenario)
    assert seen["during_status"] == 503
    assert seen["during_code"] == "storage_unavailable"
    assert seen["health_status"] == 503
    assert seen["after"]["state"] == "CONFIRMED"
    assert seen["after"]["version"] == 2
    assert seen["health_after"] == 200
