"""The storage conformance suite: every adapter must pass all of it.

Each test runs once per adapter through the ``database_url`` fixture (ids
``sqlite`` and ``postgres``; the PostgreSQL ones need
ORDERFLOW_TEST_POSTGRES_URL). Tests drive either the raw ``Storage``
protocol or ``orderflow.Engine`` on top of it. "Changes nothing" is checked
by comparing a full dump of orderflow's tables before and after.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orderflow import (
    DEFAULT_LIFECYCLE,
    Engine,
    EpochMismatch,
    Event,
    HistoryTruncated,
    IdConflict,
    IdempotencyKeyReused,
    InvalidTransition,
    Order,
    OrderNotFound,
    StorageError,
    StorageUnavailable,
    VersionConflict,
    core,
)
from orderflow.digest import EMPTY_DIGEST, digest_of
from orderflow.storage import Change, Storage, StoredResult, storage_from_url
from orderflow.storage.sqlite import SQLiteStorage

PIZZA = [{"name": "Margherita", "quantity": 2, "station": "oven", "notes": "well done"}]
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def dump(url: str) -> dict[str, list[tuple[str, ...]]]:
    """Return every row of orderflow's tables, as sorted text tuples, by table."""
    if not is_sqlite(url):
        from tests.pg_support import dump_schema

        return dump_schema(url)
    path = SQLiteStorage.from_url(url).path
    result: dict[str, list[tuple[str, ...]]] = {}
    with closing(sqlite3.connect(path)) as conn:
        names = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'orderflow%'"
            " ORDER BY name"
        ).fetchall()
        for (name,) in names:
            rows = conn.execute(f'SELECT * FROM "{name}"').fetchall()
            result[name] = sorted(tuple(str(value) for value in row) for row in rows)
    return result


@pytest.fixture
def storage(database_url: str) -> Iterator[Storage]:
    opened = storage_from_url(database_url)
    opened.open()
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_engine(database_url: str, clock: FakeClock) -> Iterator[Engine]:
    with Engine.open(database_url, clock=clock) as opened:
        yield opened


def seqs(engine: Engine, location: str = "main") -> list[int]:
    return [event.seq for event in engine.events_since(0, location=location).events]


# Raw adapter helpers: the three calls the engine makes, spelled out.


def raw_create(
    storage: Storage,
    order_id: str,
    *,
    location: str = "main",
    key: str | None = None,
    on_commit: Any = None,
    seq_offset: int = 1,
    then_raise: bool = False,
) -> Order:
    """Create an order; ``seq_offset`` other than 1 and ``then_raise`` break the rules."""
    request = core.parse_new_order({"items": PIZZA, "id": order_id, "location": location})
    with storage.write(on_commit=on_commit) as tx:
        locked = tx.lock_location(location, key)
        order, draft = core.create_order(request, DEFAULT_LIFECYCLE, order_id=order_id, now=START)
        event = draft.numbered(locked.position.head + seq_offset)
        fingerprint = request.fingerprint() if key else None
        tx.save(Change(order, None, event, True, True, key, fingerprint))
        if then_raise:
            raise RuntimeError("abandon")
    return order


def raw_transition_change(
    storage: Storage, order_id: str, to: str, *, previous_version: int | None = None
) -> None:
    """Move an order with the raw protocol, optionally claiming a wrong previous version."""
    request = core.parse_transition(order_id, {"to": to}, DEFAULT_LIFECYCLE)
    with storage.write() as tx:
        locked = tx.lock_order(order_id)
        assert locked is not None
        order, draft = core.transition_order(locked.order, request, DEFAULT_LIFECYCLE, now=START)
        event = draft.numbered(locked.position.head + 1)
        previous = locked.order.version if previous_version is None else previous_version
        tx.save(Change(order, previous, event, True, False))


# Opening and closing.


def test_implements_protocol(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    storage.ping()


def test_closed_storage_unavailable(database_url: str) -> None:
    storage = storage_from_url(database_url)
    storage.open()
    storage.close()

    with pytest.raises(StorageUnavailable):
        storage.get_order("A-1")
    with pytest.raises(StorageUnavailable):
        storage.ping()


# Migrations.


def test_reopen_keeps_data(database_url: str) -> None:
    with Engine.open(database_url) as first:
        order = first.create(PIZZA)
    before = dump(database_url)

    with Engine.open(database_url) as second:
        assert second.get(order.id) == order
    assert dump(database_url) == before


def test_open_twice_at_once(database_url: str) -> None:
    barrier = threading.Barrier(2, timeout=30)
    storages = [storage_from_url(database_url) for _ in range(2)]
    failures: list[BaseException] = []

    def open_one(storage: Storage) -> None:
        try:
            barrier.wait()
            storage.open()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_one, args=(storage,)) for storage in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert failures == []
        raw_create(storages[0], "first")
        raw_create(storages[1], "second")
        assert storages[0].position("main").head == 2
    finally:
        for storage in storages:
            storage.close()


# Round trips.


def test_create_round_trip(db_engine: Engine) -> None:
    order = db_engine.create(PIZZA, id="T1-1", meta={"table": 7, "channel": "pos"}, actor="ana")

    assert order.state == "PENDING"
    assert order.version == 1
    assert db_engine.get("T1-1") == order


def test_transition_round_trip(db_engine: Engine, clock: FakeClock) -> None:
    order = db_engine.create(PIZZA)
    clock.advance(timedelta(seconds=30))

    moved = db_engine.transition(order.id, "CONFIRMED", expected_version=1, actor="cashier")

    assert moved.state == "CONFIRMED"
    assert moved.version == 2
    assert moved.updated_at == START + timedelta(seconds=30)
    assert db_engine.get(order.id) == moved
    event = db_engine.history(order.id)[-1]
    assert (event.from_state, event.to_state, event.actor) == ("PENDING", "CONFIRMED", "cashier")


def test_update_round_trip(db_engine: Engine) -> None:
    order = db_engine.create(PIZZA)

    updated = db_engine.update(
        order.id, items=[{"name": "Diavola", "quantity": 1}], meta={"table": 3}
    )

    assert db_engine.get(order.id) == updated
    assert [item.name for item in updated.items] == ["Diavola"]
    assert db_engine.history(order.id)[-1].kind == "order.updated"


def test_terminal_leaves_snapshot(db_engine: Engine) -> None:
    kept = db_engine.create(PIZZA)
    gone = db_engine.create(PIZZA)

    db_engine.transition(gone.id, "CANCELLED", reason="customer left")

    assert [order.id for order in db_engine.snapshot().orders] == [kept.id]
    assert db_engine.get(gone.id).state == "CANCELLED"


# The event log.


def test_seq_gap_free(db_engine: Engine) -> None:
    for index in range(4):
        order = db_engine.create(PIZZA, location="north" if index % 2 else "main")
        db_engine.transition(order.id, "CONFIRMED")

    for location in ("main", "north"):
        head = db_engine.position(location).head
        assert seqs(db_engine, location) == list(range(1, head + 1))


def test_events_carry_orders(db_engine: Engine) -> None:
    order = db_engine.create(PIZZA)
    moved = db_engine.transition(order.id, "CONFIRMED")

    events = db_engine.events_since(0).events

    assert [event.order for event in events] == [order, moved]
    assert [event.version for event in events] == [1, 2]


def test_new_location_position(db_engine: Engine) -> None:
    position = db_engine.position("annex")

    assert position.head == 0
    assert position.oldest == 0
    assert len(position.epoch) == 16


def test_epochs_per_location(db_engine: Engine) -> None:
    first = db_engine.position("main").epoch
    second = db_engine.position("annex").epoch

    assert first != second
    assert db_engine.position("main").epoch == first


def test_locations_number_separately(db_engine: Engine) -> None:
    db_engine.create(PIZZA, location="main")
    db_engine.create(PIZZA, location="main")
    db_engine.create(PIZZA, location="annex")

    assert seqs(db_engine, "main") == [1, 2]
    assert seqs(db_engine, "annex") == [1]
    heads = {position.location: position.head for position in db_engine.storage.locations()}
    assert heads == {"annex": 1, "main": 2}


# Idempotency keys.


def test_key_replays_create(db_engine: Engine, database_url: str) -> None:
    first = db_engine.create(PIZZA, idempotency_key="create-1")
    before = dump(database_url)

    again = db_engine.create(PIZZA, idempotency_key="create-1")

    assert again == first
    assert dump(database_url) == before


def test_key_replays_transition(db_engine: Engine, database_url: str) -> None:
    order = db_engine.create(PIZZA)
    first = db_engine.transition(order.id, "CONFIRMED", expected_version=1, idempotency_key="k")
    before = dump(database_url)

    again = db_engine.transition(order.id, "CONFIRMED", expected_version=1, idempotency_key="k")

    assert again == first
    assert dump(database_url) == before


def test_key_reuse_rejected(db_engine: Engine, database_url: str) -> None:
    order = db_engine.create(PIZZA)
    db_engine.transition(order.id, "CONFIRMED", idempotency_key="k")
    before = dump(database_url)

    with pytest.raises(IdempotencyKeyReused):
        db_engine.transition(order.id, "PREPARING", idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused):
        db_engine.create(PIZZA, idempotency_key="k")
    assert dump(database_url) == before


def test_keys_per_location(db_engine: Engine) -> None:
    main = db_engine.create(PIZZA, location="main", idempotency_key="same")
    annex = db_engine.create(PIZZA, location="annex", idempotency_key="same")

    assert annex.id != main.id
    assert annex.location == "annex"


def test_raw_lock_reads_key(storage: Storage) -> None:
    order = raw_create(storage, "K-1", key="key-1")

    with storage.write() as tx:
        by_location = tx.lock_location("main", "key-1").stored
        by_order = tx.lock_order("K-1", "key-1")
        unknown = tx.lock_location("main", "key-2").stored

    assert by_location is not None
    assert by_location.order == order
    assert by_order is not None
    assert by_order.stored == by_location
    assert isinstance(by_location, StoredResult)
    assert unknown is None


# Rejected changes write nothing.


def _id_conflict(engine: Engine, order: Order) -> None:
    engine.create(PIZZA, id=order.id, location="annex")


def _version_conflict(engine: Engine, order: Order) -> None:
    engine.transition(order.id, "PREPARING", expected_version=1)


def _invalid_transition(engine: Engine, order: Order) -> None:
    engine.transition(order.id, "COMPLETED")


@pytest.mark.parametrize(
    ("reject", "error"),
    [
        pytest.param(_id_conflict, IdConflict, id="id_conflict"),
        pytest.param(_version_conflict, VersionConflict, id="version_conflict"),
        pytest.param(_invalid_transition, InvalidTransition, id="invalid_transition"),
    ],
)
def test_rejection_changes_nothing(
    db_engine: Engine, database_url: str, reject: Any, error: type[Exception]
) -> None:
    order = db_engine.create(PIZZA, id="R-1")
    order = db_engine.transition(order.id, "CONFIRMED")
    db_engine.position("annex")
    before = dump(database_url)

    with pytest.raises(error):
        reject(db_engine, order)

    assert dump(database_url) == before
    assert db_engine.get(order.id) == order


def test_engine_usable_after_rejection(db_engine: Engine) -> None:
    order = db_engine.create(PIZZA, id="R-2")
    with pytest.raises(IdConflict):
        db_engine.create(PIZZA, id="R-2")

    moved = db_engine.transition(order.id, "CONFIRMED")

    assert moved.version == 2
    assert seqs(db_engine) == [1, 2]


def test_raw_id_conflict(storage: Storage, database_url: str) -> None:
    raw_create(storage, "dup")
    before = dump(database_url)

    with pytest.raises(IdConflict) as caught:
        raw_create(storage, "dup", location="annex")

    assert caught.value.order_id == "dup"
    assert dump(database_url) == before


def test_raw_stale_version(storage: Storage, database_url: str) -> None:
    raw_create(storage, "stale")
    before = dump(database_url)

    # The lock makes this impossible through the engine. The adapter must
    # still reject an overwrite of a row that is not at the stated version.
    with pytest.raises(StorageError):
        raw_transition_change(storage, "stale", "CONFIRMED", previous_version=7)

    assert dump(database_url) == before


def test_raw_bad_seq(storage: Storage, database_url: str) -> None:
    raw_create(storage, "first")
    before = dump(database_url)

    with pytest.raises(StorageError):
        raw_create(storage, "second", seq_offset=2)

    assert dump(database_url) == before


def test_raw_lock_missing_order(storage: Storage) -> None:
    with storage.write() as tx:
        assert tx.lock_order("nobody") is None


# Transactions.


def test_raw_commit_calls_on_commit(storage: Storage) -> None:
    calls: list[int] = []

    raw_create(storage, "C-1", on_commit=lambda: calls.append(storage.position("main").head))

    assert calls == [1]


def test_raw_rollback(storage: Storage, database_url: str) -> None:
    storage.position("main")
    before = dump(database_url)
    calls: list[str] = []

    with pytest.raises(RuntimeError, match="abandon"):
        raw_create(storage, "never", on_commit=lambda: calls.append("x"), then_raise=True)

    assert calls == []
    assert dump(database_url) == before
    assert storage.get_order("never") is None


def test_transaction_rollback(db_engine: Engine, database_url: str) -> None:
    db_engine.position("main")
    before = dump(database_url)
    heard: list[Event] = []
    db_engine.add_listener(heard.extend)
    subscription = db_engine.broker.subscribe()

    def abandon() -> None:
        with db_engine.transaction() as tx:
            tx.create(PIZZA, id="gone-1")
            tx.create(PIZZA, id="gone-2")
            raise RuntimeError("abandon")

    with pytest.raises(RuntimeError, match="abandon"):
        abandon()

    assert dump(database_url) == before
    assert heard == []
    assert subscription.receive_nowait() == []


def test_transaction_commits_together(db_engine: Engine) -> None:
    heard: list[list[int]] = []
    db_engine.add_listener(lambda events: heard.append([event.seq for event in events]))

    with db_engine.transaction() as tx:
        first = tx.create(PIZZA)
        tx.transition(first.id, "CONFIRMED")
        tx.create(PIZZA, location="main")

    assert heard == [[1, 2, 3]]
    assert seqs(db_engine) == [1, 2, 3]


# Snapshots.


def test_snapshot_matches_events(db_engine: Engine) -> None:
    orders = [db_engine.create(PIZZA) for _ in range(4)]
    db_engine.transition(orders[0].id, "CONFIRMED")
    db_engine.transition(orders[1].id, "REJECTED")
    db_engine.update(orders[2].id, meta={"table": 9})

    snapshot = db_engine.snapshot()

    replayed: dict[str, Order] = {}
    for event in db_engine.events_since(0).events:
        if DEFAULT_LIFECYCLE.is_active(event.order.state):
            replayed[event.order_id] = event.order
        else:
            replayed.pop(event.order_id, None)
    assert snapshot.head == 7
    assert {order.id: order for order in snapshot.orders} == replayed
    assert snapshot.digest == digest_of((order.id, order.version) for order in replayed.values())


def test_snapshot_empty_location(db_engine: Engine) -> None:
    snapshot = db_engine.snapshot("annex")

    assert snapshot.head == 0
    assert snapshot.orders == ()
    assert snapshot.digest == EMPTY_DIGEST


def test_snapshot_orders_by_creation(db_engine: Engine) -> None:
    created = [db_engine.create(PIZZA, id=f"S-{index}") for index in (3, 1, 2)]

    assert [order.id for order in db_engine.snapshot().orders] == [o.id for o in created]


# Reading the log.


def test_events_paging(db_engine: Engine) -> None:
    for _ in range(7):
        db_engine.create(PIZZA)

    pages = []
    cursor = 0
    while True:
        page = db_engine.events_since(cursor, limit=3)
        assert page.head == 7
        if not page.events:
            break
        pages.append([event.seq for event in page.events])
        cursor = page.events[-1].seq

    assert pages == [[1, 2, 3], [4, 5, 6], [7]]


def test_events_since_head_empty(db_engine: Engine) -> None:
    db_engine.create(PIZZA)

    page = db_engine.events_since(1)

    assert page.events == ()
    assert page.head == 1


def test_prune_truncates_history(db_engine: Engine, clock: FakeClock) -> None:
    first = db_engine.create(PIZZA)
    second = db_engine.create(PIZZA)
    db_engine.transition(first.id, "CANCELLED", reason="no oven")
    db_engine.transition(second.id, "REJECTED")
    clock.advance(timedelta(days=2))
    fresh = db_engine.create(PIZZA)

    deleted = db_engine.prune(older_than=timedelta(days=1))

    assert deleted == 4
    with pytest.raises(HistoryTruncated) as caught:
        db_engine.events_since(0)
    assert caught.value.oldest == 4
    assert [event.order_id for event in db_engine.events_since(4).events] == [fresh.id]
    assert db_engine.history(first.id) == []
    assert db_engine.position().oldest == 4


def test_prune_keeps_active_orders(db_engine: Engine, clock: FakeClock) -> None:
    waiting = db_engine.create(PIZZA)
    done = db_engine.create(PIZZA)
    db_engine.transition(done.id, "REJECTED")
    clock.advance(timedelta(days=2))

    deleted = db_engine.prune(older_than=timedelta(days=1))

    assert deleted == 0
    assert seqs(db_engine) == [1, 2, 3]
    assert [event.seq for event in db_engine.history(waiting.id)] == [1]


def test_prune_stops_before_active(db_engine: Engine, clock: FakeClock) -> None:
    done = db_engine.create(PIZZA)
    db_engine.transition(done.id, "REJECTED")
    waiting = db_engine.create(PIZZA)
    clock.advance(timedelta(days=2))

    deleted = db_engine.prune(older_than=timedelta(days=1))

    assert deleted == 2
    assert [event.seq for event in db_engine.events_since(2).events] == [3]
    assert [event.seq for event in db_engine.history(waiting.id)] == [3]


def test_new_epoch(db_engine: Engine) -> None:
    db_engine.create(PIZZA)
    old = db_engine.position().epoch

    new = db_engine.new_epoch()

    assert new != old
    assert db_engine.position().epoch == new
    assert db_engine.position().head == 1
    with pytest.raises(EpochMismatch):
        db_engine.events_since(0, epoch=old)


def test_order_history(db_engine: Engine) -> None:
    order = db_engine.create(PIZZA)
    db_engine.create(PIZZA)
    db_engine.transition(order.id, "CONFIRMED")
    db_engine.transition(order.id, "PREPARING")

    history = db_engine.history(order.id)

    assert [event.seq for event in history] == [1, 3, 4]
    assert {event.order_id for event in history} == {order.id}


def test_order_history_unknown(db_engine: Engine) -> None:
    assert db_engine.storage.order_history("nobody") is None
    with pytest.raises(OrderNotFound):
        db_engine.history("nobody")


# Text and neighbours.


def test_non_ascii_round_trip(db_engine: Engine) -> None:
    items = [{"name": "Crème brûlée", "quantity": 1, "notes": "sans sucre, 砂糖なし 🍮"}]
    meta = {"customer": "Zoë Ångström", "table": "Ω-7", "note": "寿司"}

    order = db_engine.create(items, meta=meta, actor="José")
    moved = db_engine.transition(order.id, "CANCELLED", reason="Küche geschlossen 🔥")

    assert db_engine.get(order.id) == moved
    assert moved.meta == meta
    assert db_engine.history(order.id)[-1].reason == "Küche geschlossen 🔥"
    assert db_engine.events_since(0).events[0].actor == "José"


def test_host_tables_untouched(database_url: str) -> None:
    if is_sqlite(database_url):
        _check_sqlite_host_tables(database_url)
    else:
        _check_postgres_host_tables(database_url)


def _exercise(url: str) -> None:
    with Engine.open(url) as engine:
        order = engine.create(PIZZA, idempotency_key="host-1")
        engine.transition(order.id, "CONFIRMED")
        engine.prune(older_than=timedelta(0))
        engine.snapshot()


def _check_sqlite_host_tables(url: str) -> None:
    path = SQLiteStorage.from_url(url).path
    with closing(sqlite3.connect(path)) as conn, conn:
        for table in ("orders", "events", "migrations"):
            conn.execute(f"CREATE TABLE {table} (id TEXT PRIMARY KEY, note TEXT)")
            conn.execute(f"INSERT INTO {table} VALUES ('host', 'belongs to the host')")

    _exercise(url)

    with closing(sqlite3.connect(path)) as conn:
        for table in ("orders", "events", "migrations"):
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            assert rows == [("host", "belongs to the host")], table


def _check_postgres_host_tables(url: str) -> None:
    # The host's tables sit first on the connection's search_path, where an
    # unqualified table name in orderflow's SQL would find them.
    import psycopg
    from psycopg import sql

    from tests.pg_support import drop_schema, libpq_url, schema_of, with_options

    host = schema_of(url) + "_host"
    tables = ("orders", "events", "locations", "idempotency", "migrations")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(host)))
        for table in tables:
            name = sql.Identifier(host, table)
            conn.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, note text)").format(name))
            conn.execute(sql.SQL("INSERT INTO {} VALUES ('host', 'host row')").format(name))
    try:
        _exercise(with_options(url, options=f"-c search_path={host}"))

        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            for table in tables:
                rows = conn.execute(
                    sql.SQL("SELECT * FROM {}").format(sql.Identifier(host, table))
                ).fetchall()
                assert rows == [("host", "host row")], table
    finally:
        drop_schema(url, host)
