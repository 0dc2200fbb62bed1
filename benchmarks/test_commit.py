"""Commit throughput: transitions per second through ``orderflow.Engine`` against raw drivers.

Every transition moves one order between READY and PREPARING (a recall and
its remake), so the work never runs out and every order stays active. Each
writer thread owns its own orders, so no transition loses a version race.

The raw baseline runs the statements orderflow runs, in one transaction,
and decodes the row and encodes the event body (the whole order after the
change, as JSON) with the standard library, as a hand-written application
would:

- SQLite (sqlite3): ``BEGIN IMMEDIATE``, a read of the order row and of
  the location's counter row, the version-checked ``UPDATE`` of the order,
  the counter ``UPDATE``, the event ``INSERT`` and ``COMMIT``. It uses the
  same file layout (the schema orderflow creates), WAL, the same
  ``synchronous`` setting and busy timeout, and the same in-process lock
  around the single writer connection that the engine uses.
- PostgreSQL (psycopg 3, pipeline mode, two round trips as orderflow
  makes them): ``BEGIN`` with the ``SELECT ... FOR UPDATE`` of the
  location's counter row and the read of the order, then one statement
  whose CTEs update the order (version-checked), the counter and insert
  the event, sent together with ``COMMIT``. One connection per writer, with
  the same lock and statement timeouts.

Each round runs a raw batch (the benchmark's setup, timed separately) and
then the engine batch (the timed target), so both see the same load.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from benchmarks._support import (
    Orders,
    Recorder,
    Sizes,
    goal_check,
    median,
    seed,
    with_goal,
)
from orderflow import Engine
from orderflow.storage.postgres import split_url

SQLITE_GOAL = 0.5
POSTGRES_GOAL = 0.7

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def split_orders(orders: Orders, writers: int) -> list[Orders]:
    return [Orders(orders.orders[index::writers]) for index in range(writers)]


# The batches.


def run_batch(pool: ThreadPoolExecutor | None, work: Sequence[Callable[[], None]]) -> float:
    """Run each writer's work (in the pool's threads when there are several); return seconds."""
    started = time.perf_counter()
    if pool is None:
        for job in work:
            job()
    else:
        for future in [pool.submit(job) for job in work]:
            future.result()
    return time.perf_counter() - started


def engine_job(engine: Engine, orders: Orders, count: int) -> Callable[[], None]:
    def job() -> None:
        for _ in range(count):
            order_id, _, to, version = orders.next()
            engine.transition(order_id, to, expected_version=version)

    return job


def paired_rounds(
    benchmark: Any, rounds: int, baseline: Callable[[], float], measured: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Run ``rounds`` rounds of baseline then measured batch; return both lists of seconds.

    pytest-benchmark times the measured batch (its target) and keeps its
    statistics; the baseline runs in the round's setup. One warm-up round
    is run first and left out.
    """
    baseline_times: list[float] = []
    measured_times: list[float] = []

    def setup() -> None:
        baseline_times.append(baseline())

    def target() -> None:
        measured_times.append(measured())

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1)
    return baseline_times[1:], measured_times[1:]


def ratio_row(
    case: str,
    batch: int,
    raw_times: list[float],
    engine_times: list[float],
    goal: float,
) -> dict[str, Any]:
    ratios = [raw / engine for raw, engine in zip(raw_times, engine_times, strict=True)]
    ratio = median(ratios)
    met, miss = goal_check(ratio, goal, at_least=True)
    row = {
        "case": case,
        "orderflow": batch / median(engine_times),
        "raw": batch / median(raw_times),
        "ratio": ratio,
        "batch": batch,
        "rounds": len(ratios),
        "ratios": ratios,
    }
    return with_goal(row, f">= {goal:.2f} of raw", met, miss)


@contextmanager
def writer_pool(writers: int) -> Iterator[ThreadPoolExecutor | None]:
    if writers == 1:
        yield None
        return
    with ThreadPoolExecutor(writers, thread_name_prefix="bench-writer") as pool:
        yield pool


# SQLite.

SQLITE_SELECT_ORDER = (
    "SELECT id, location, state, version, items, meta, created_at, updated_at"
    " FROM orderflow_orders WHERE id = ?"
)
SQLITE_SELECT_POSITION = "SELECT epoch, head, oldest FROM orderflow_locations WHERE location = ?"
SQLITE_UPDATE_ORDER = (
    "UPDATE orderflow_orders SET state = ?, version = ?, active = ?, updated_at = ?"
    " WHERE id = ? AND version = ?"
)
SQLITE_SET_HEAD = "UPDATE orderflow_locations SET head = ? WHERE location = ?"
SQLITE_INSERT_EVENT = (
    "INSERT INTO orderflow_events (location, seq, order_id, kind, from_state, to_state,"
    " version, at, actor, reason, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def event_body(
    seq: int,
    row: Sequence[Any],
    to: str,
    version: int,
    at: str,
    items: Any,
    meta: Any,
    created: str,
) -> str:
    """Encode the event as orderflow stores it: its fields and the whole order after it."""
    event = {
        "seq": seq,
        "order_id": row[0],
        "kind": "order.transitioned",
        "from": row[2],
        "to": to,
        "version": version,
        "at": at,
        "actor": None,
        "reason": None,
        "order": {
            "id": row[0],
            "location": row[1],
            "state": to,
            "version": version,
            "items": items,
            "meta": meta,
            "created_at": created,
            "updated_at": at,
        },
    }
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def raw_sqlite_job(
    conn: Any, lock: threading.Lock, orders: Orders, count: int
) -> Callable[[], None]:
    def transition() -> None:
        order_id, _, to, expected = orders.next()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(SQLITE_SELECT_ORDER, (order_id,)).fetchone()
            position = conn.execute(SQLITE_SELECT_POSITION, (row[1],)).fetchone()
            if row[3] != expected:
                raise RuntimeError(f"order {order_id} is at version {row[3]}, not {expected}")
            seq = position[1] + 1
            version = expected + 1
            at = datetime.now(UTC).strftime(TIME_FORMAT)
            cursor = conn.execute(SQLITE_UPDATE_ORDER, (to, version, 1, at, order_id, expected))
            if cursor.rowcount != 1:
                raise RuntimeError(f"order {order_id} changed under the write lock")
            conn.execute(SQLITE_SET_HEAD, (seq, row[1]))
            body = event_body(
                seq, row, to, version, at, json.loads(row[4]), json.loads(row[5]), row[6]
            )
            conn.execute(
                SQLITE_INSERT_EVENT,
                (
                    row[1],
                    seq,
                    order_id,
                    "order.transitioned",
                    row[2],
                    to,
                    version,
                    at,
                    None,
                    None,
                    body,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def job() -> None:
        for _ in range(count):
            with lock:
                transition()

    return job


@pytest.mark.parametrize("writers", [1, 2, 4], ids=lambda n: f"writers={n}")
@pytest.mark.parametrize("synchronous", ["full", "normal"], ids=lambda s: f"synchronous={s}")
def test_sqlite_commit(
    benchmark: Any,
    sizes: Sizes,
    recorder: Recorder,
    tmp_path: Path,
    synchronous: str,
    writers: int,
) -> None:
    import sqlite3

    orders_count = writers * sizes.orders_per_writer
    engine_url = f"sqlite:///{tmp_path / 'engine.db'}?synchronous={synchronous}"
    raw_path = tmp_path / "raw.db"
    with Engine.open(f"sqlite:///{raw_path}?synchronous={synchronous}") as schema_engine:
        raw_orders = split_orders(seed(schema_engine, ["main"], orders_count)[0], writers)

    conn = sqlite3.connect(
        raw_path, timeout=5.0, isolation_level=None, check_same_thread=False, cached_statements=64
    )
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    lock = threading.Lock()
    per_writer = sizes.sqlite_batch // writers
    batch = per_writer * writers
    try:
        with Engine.open(engine_url) as engine, writer_pool(writers) as pool:
            engine_orders = split_orders(seed(engine, ["main"], orders_count)[0], writers)
            raw_work = [raw_sqlite_job(conn, lock, mine, per_writer) for mine in raw_orders]
            engine_work = [engine_job(engine, mine, per_writer) for mine in engine_orders]
            raw_times, engine_times = paired_rounds(
                benchmark,
                sizes.commit_rounds,
                lambda: run_batch(pool, raw_work),
                lambda: run_batch(pool, engine_work),
            )
    finally:
        conn.close()

    assert mode == "wal"
    noun = "writer" if writers == 1 else "writers"
    case = f"SQLite, synchronous={synchronous.upper()}, {writers} {noun}"
    row = ratio_row(case, batch, raw_times, engine_times, SQLITE_GOAL)
    benchmark.extra_info.update(row)
    recorder.add("commit", row)


# PostgreSQL.


def postgres_statements(schema: str) -> dict[str, bytes]:
    """Render the raw baseline's statements for ``schema``, as orderflow's adapter writes them."""
    identifier = sql.Identifier(schema)

    def q(text: str) -> bytes:
        return sql.SQL(text).format(s=identifier).as_bytes(None)

    return {
        "lock": q(
            "SELECT location, epoch, head, oldest FROM {s}.locations WHERE location ="
            " (SELECT location FROM {s}.orders WHERE id = %s) FOR UPDATE"
        ),
        "order": q(
            "SELECT id, location, state, version, items, meta, created_at, updated_at"
            " FROM {s}.orders WHERE id = %s"
        ),
        "save": q(
            "WITH changed AS (UPDATE {s}.orders SET state = %(state)s, version = %(version)s,"
            " active = %(active)s, updated_at = %(updated_at)s WHERE id = %(id)s"
            " AND version = %(previous_version)s RETURNING 1),"
            " head AS (UPDATE {s}.locations SET head = %(seq)s WHERE location = %(location)s),"
            " event AS (INSERT INTO {s}.events (location, seq, order_id, kind, from_state,"
            " to_state, version, at, actor, reason, body) VALUES (%(location)s, %(seq)s,"
            " %(id)s, %(kind)s, %(from_state)s, %(to_state)s, %(version)s, %(at)s, %(actor)s,"
            " %(reason)s, %(body)s))"
            " SELECT {s}.require_one_row(count(*), %(detail)s) FROM changed"
        ),
    }


def raw_postgres_connection(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(split_url(url)[0], autocommit=True, application_name="orderflow-bench")
    conn.execute(
        "SELECT set_config('lock_timeout', '5000ms', false),"
        " set_config('statement_timeout', '30000ms', false)"
    )
    return conn


def raw_postgres_job(
    conn: psycopg.Connection[Any], statements: dict[str, bytes], orders: Orders, count: int
) -> Callable[[], None]:
    def transition() -> None:
        order_id, _, to, expected = orders.next()
        try:
            with conn.pipeline():
                conn.execute(b"BEGIN ISOLATION LEVEL READ COMMITTED", prepare=False)
                locked = conn.execute(statements["lock"], (order_id,))
                current = conn.execute(statements["order"], (order_id,))
                position = locked.fetchone()
                row = current.fetchone()
                if position is None or row is None or row[3] != expected:
                    raise RuntimeError(f"order {order_id} is not at version {expected}")
                now = datetime.now(UTC)
                at = now.strftime(TIME_FORMAT)
                version = expected + 1
                created = row[6].astimezone(UTC).strftime(TIME_FORMAT)
                params = {
                    "id": order_id,
                    "location": row[1],
                    "state": to,
                    "version": version,
                    "active": True,
                    "updated_at": now,
                    "previous_version": expected,
                    "seq": position[2] + 1,
                    "kind": "order.transitioned",
                    "from_state": row[2],
                    "to_state": to,
                    "at": now,
                    "actor": None,
                    "reason": None,
                    "body": event_body(
                        position[2] + 1, row, to, version, at, row[4], row[5], created
                    ),
                    "detail": f"order {order_id!r} was not at version {expected}",
                }
                conn.execute(statements["save"], params)
                conn.execute(b"COMMIT", prepare=False)
        except BaseException:
            conn.rollback()
            raise

    def job() -> None:
        for _ in range(count):
            transition()

    return job


@pytest.mark.postgres
@pytest.mark.parametrize("writers", [1, 2, 4], ids=lambda n: f"writers={n}")
def test_postgres_commit(
    benchmark: Any,
    sizes: Sizes,
    recorder: Recorder,
    postgres_url: str,
    fresh_postgres_url: str,
    writers: int,
) -> None:
    from tests.pg_support import fresh_schema_url

    orders_count = writers * sizes.orders_per_writer
    per_writer = sizes.postgres_batch // writers
    batch = per_writer * writers
    with fresh_schema_url(postgres_url) as raw_url:
        with Engine.open(raw_url) as schema_engine:
            raw_orders = split_orders(seed(schema_engine, ["main"], orders_count)[0], writers)
        statements = postgres_statements(split_url(raw_url)[1].schema)
        connections = [raw_postgres_connection(raw_url) for _ in range(writers)]
        try:
            with Engine.open(fresh_postgres_url) as engine, writer_pool(writers) as pool:
                engine_orders = split_orders(seed(engine, ["main"], orders_count)[0], writers)
                raw_work = [
                    raw_postgres_job(conn, statements, mine, per_writer)
                    for conn, mine in zip(connections, raw_orders, strict=True)
                ]
                engine_work = [engine_job(engine, mine, per_writer) for mine in engine_orders]
                raw_times, engine_times = paired_rounds(
                    benchmark,
                    sizes.commit_rounds,
                    lambda: run_batch(pool, raw_work),
                    lambda: run_batch(pool, engine_work),
                )
        finally:
            for conn in connections:
                conn.close()

    noun = "writer" if writers == 1 else "writers"
    row = ratio_row(
        f"PostgreSQL, {writers} {noun}, one location", batch, raw_times, engine_times, POSTGRES_GOAL
    )
    benchmark.extra_info.update(row)
    recorder.add("commit", row)


@pytest.mark.postgres
def test_postgres_locations(
    benchmark: Any, sizes: Sizes, recorder: Recorder, fresh_postgres_url: str
) -> None:
    """Compare four writers on one location with four writers on four locations."""
    writers = 4
    per_writer = sizes.postgres_batch // writers
    batch = per_writer * writers
    with Engine.open(fresh_postgres_url) as engine, writer_pool(writers) as pool:
        shared = split_orders(seed(engine, ["main"], writers * sizes.orders_per_writer)[0], writers)
        names = [f"kitchen-{number}" for number in range(1, writers + 1)]
        separate = seed(engine, names, sizes.orders_per_writer)
        one_location = [engine_job(engine, mine, per_writer) for mine in shared]
        four_locations = [engine_job(engine, mine, per_writer) for mine in separate]
        one_times, four_times = paired_rounds(
            benchmark,
            sizes.commit_rounds,
            lambda: run_batch(pool, one_location),
            lambda: run_batch(pool, four_locations),
        )

    ratios = [one / four for one, four in zip(one_times, four_times, strict=True)]
    row = {
        "case": "4 writers, 4 locations",
        "value": batch / median(four_times),
        "baseline_case": "4 writers, 1 location",
        "baseline": batch / median(one_times),
        "ratio": median(ratios),
        "ratios": ratios,
        "note": "writers of one location queue on its counter row",
    }
    benchmark.extra_info.update(row)
    recorder.add("locations", row)


@pytest.mark.postgres
def test_postgres_location_lock(
    benchmark: Any, sizes: Sizes, recorder: Recorder, fresh_postgres_url: str
) -> None:
    """Measure a writer of location B while another transaction locks location A's counter row."""
    hold_seconds = 0.3
    with Engine.open(fresh_postgres_url) as engine:
        location_a, location_b = seed(engine, ["kitchen-a", "kitchen-b"], sizes.orders_per_writer)
        schema = split_url(fresh_postgres_url)[1].schema
        holder = raw_postgres_connection(fresh_postgres_url)
        lock_a = sql.SQL("SELECT head FROM {}.locations WHERE location = %s FOR UPDATE").format(
            sql.Identifier(schema)
        )
        work_b = engine_job(engine, location_b, sizes.postgres_batch)

        def hold_a() -> None:
            holder.execute("BEGIN")
            holder.execute(lock_a, ("kitchen-a",))

        def release_a() -> None:
            holder.execute("ROLLBACK")

        def locked_batch() -> float:
            hold_a()
            try:
                return run_batch(None, [work_b])
            finally:
                release_a()

        free_times, locked_times = paired_rounds(
            benchmark, sizes.commit_rounds, lambda: run_batch(None, [work_b]), locked_batch
        )

        # A writer of A itself must wait until the holder lets go.
        hold_a()
        waited: list[float] = []
        order_id, _, to, version = location_a.next()

        def write_a() -> None:
            started = time.perf_counter()
            engine.transition(order_id, to, expected_version=version)
            waited.append(time.perf_counter() - started)

        writer = threading.Thread(target=write_a)
        writer.start()
        time.sleep(hold_seconds)
        finished_early = not writer.is_alive()
        release_a()
        writer.join(10)
        holder.close()

    assert not finished_early, "a writer of the locked location did not wait for the lock"
    assert waited, "the writer of the locked location did not finish after the release"
    ratios = [free / locked for free, locked in zip(free_times, locked_times, strict=True)]
    row = {
        "case": "writer of B, A's counter row locked",
        "value": sizes.postgres_batch / median(locked_times),
        "baseline_case": "writer of B, nothing locked",
        "baseline": sizes.postgres_batch / median(free_times),
        "ratio": median(ratios),
        "ratios": ratios,
        "note": (
            f"a writer of A meanwhile waited {waited[0] * 1000:.0f} ms "
            f"for a {hold_seconds * 1000:.0f} ms hold"
        ),
    }
    benchmark.extra_info.update(row)
    recorder.add("locations", row)
