"""Concurrency tests of the engine on one SQLite file, with threads and with processes.

Threads share one ``Engine``; processes each open their own engine on the
same file with the "spawn" start method. After the writers stop, the tests
read ``orderflow_events`` and ``orderflow_orders`` directly with sqlite3, so a
bug in the engine's read path cannot hide one in its write path, and check:

- per location, seq runs 1..head with no gap and no duplicate;
- every change a writer got back (an ``Order``) is in the log at that version;
- each order row equals the replay of its order's events;
- the head equals the number of acknowledged changes.

The log-reading helpers here are also used by ``test_crash.py``.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from orderflow import DEFAULT_LIFECYCLE, Engine, Order, VersionConflict

T = TypeVar("T")

LOCATIONS = ("main", "patio")
ITEMS = [{"name": "Margherita", "quantity": 1, "station": "oven"}]
NEXT_STATE = {
    "PENDING": "CONFIRMED",
    "CONFIRMED": "PREPARING",
    "PREPARING": "READY",
    "READY": "COMPLETED",
}
# Shared orders are recalled from READY instead of completed, so they stay
# active and keep writers racing on them until the end.
SHARED_NEXT_STATE = {**NEXT_STATE, "READY": "PREPARING"}
SHARED_PER_LOCATION = 3

# Upper bound in seconds for every wait: a thread join, a barrier, a queue read.
WAIT = 60.0
THREADS = 8
THREAD_STEPS = 150
PROCESSES = 4
PROCESS_STEPS = 200
RACERS = 8
RACE_ROUNDS = 5
# Processes take turns at SQLite's write lock through its busy handler, which
# is not fair, so one writer may wait while the others run several bursts.
# 20 s instead of the 5 s default keeps a slow run from failing with StorageBusy.
PROCESS_URL_OPTIONS = "?busy_timeout=20000"

Ack = dict[str, Any]
"""The ``Order.to_dict()`` of a change that a writer got back from the engine."""


# Reading and checking the log.


@dataclass(frozen=True)
class Log:
    """The raw contents of an orderflow SQLite file, read with sqlite3."""

    heads: dict[str, int]
    seqs: dict[str, list[int]]
    events: dict[str, list[dict[str, Any]]]
    rows: dict[str, dict[str, Any]]
    active: dict[str, bool]


def read_log(path: Path) -> Log:
    """Read the heads, event bodies and order rows of ``path`` in one read transaction."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN")
        heads = dict(conn.execute("SELECT location, head FROM orderflow_locations").fetchall())
        seqs: dict[str, list[int]] = {location: [] for location in heads}
        events: dict[str, list[dict[str, Any]]] = {location: [] for location in heads}
        for location, seq, body in conn.execute(
            "SELECT location, seq, body FROM orderflow_events ORDER BY location, seq"
        ):
            seqs.setdefault(location, []).append(seq)
            events.setdefault(location, []).append(json.loads(body))
        rows: dict[str, dict[str, Any]] = {}
        active: dict[str, bool] = {}
        for row in conn.execute(
            "SELECT id, location, state, version, items, meta, created_at, updated_at, active"
            " FROM orderflow_orders"
        ):
            rows[row[0]] = {
                "id": row[0],
                "location": row[1],
                "state": row[2],
                "version": row[3],
                "items": json.loads(row[4]),
                "meta": json.loads(row[5]),
                "created_at": row[6],
                "updated_at": row[7],
            }
            active[row[0]] = bool(row[8])
        conn.execute("COMMIT")
    return Log(heads, seqs, events, rows, active)


def seq_gaps(log: Log) -> dict[str, list[int]]:
    """Return, per location whose seq column is not exactly 1..head, that column."""
    return {
        location: log.seqs.get(location, [])
        for location, head in log.heads.items()
        if log.seqs.get(location, []) != list(range(1, head + 1))
    }


def body_seq_mismatches(log: Log) -> list[tuple[str, int, int]]:
    """Return (location, column seq, body seq) for events whose JSON body has another seq."""
    return [
        (location, seq, event["seq"])
        for location in log.seqs
        for seq, event in zip(log.seqs[location], log.events[location], strict=True)
        if event["seq"] != seq
    ]


def replay(log: Log) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Apply every event in seq order and return the orders it yields and any broken link.

    A broken link is an event whose ``from``, ``version``, location or order
    does not follow the order's previous event.
    """
    orders: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for location, events in log.events.items():
        for event in events:
            before = orders.get(event["order_id"])
            expected_from = None if before is None else before["state"]
            expected_version = 1 if before is None else before["version"] + 1
            after = event["order"]
            link = (
                event["from"] == expected_from
                and event["version"] == expected_version
                and after["version"] == expected_version
                and after["state"] == event["to"]
                and after["id"] == event["order_id"]
                and after["location"] == location
            )
            if not link:
                problems.append(f"{location} seq {event['seq']}: {event} after {before}")
            orders[event["order_id"]] = after
    return orders, problems


def missing_acks(log: Log, acks: Sequence[Ack]) -> list[Ack]:
    """Return the acknowledged changes that the log lacks or contains with other content."""
    logged = {
        (event["order_id"], event["version"]): event["order"]
        for events in log.events.values()
        for event in events
    }
    return [ack for ack in acks if logged.get((ack["id"], ack["version"])) != ack]


def unacknowledged(log: Log, acks: Sequence[Ack]) -> list[tuple[str, int]]:
    """Return (order id, version) of logged events that no writer got back."""
    acked = {(ack["id"], ack["version"]) for ack in acks}
    return [
        (event["order_id"], event["version"])
        for events in log.events.values()
        for event in events
        if (event["order_id"], event["version"]) not in acked
    ]


def wrong_active_flags(log: Log) -> list[str]:
    """Return the ids of rows whose ``active`` column disagrees with their state."""
    return [
        order_id
        for order_id, row in log.rows.items()
        if log.active[order_id] != DEFAULT_LIFECYCLE.is_active(row["state"])
    ]


def read_pages(engine: Engine, location: str, limit: int = 37) -> list[dict[str, Any]]:
    """Read a location's whole log through ``engine.events_since``, one page at a time."""
    events: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page = engine.events_since(cursor, location=location, limit=limit)
        if not page.events:
            return events
        events.extend(event.to_dict() for event in page.events)
        cursor = page.events[-1].seq


def check_log(engine: Engine, path: Path, acks: Sequence[Ack]) -> Log:
    """Assert the invariants that hold whenever no write is in flight, and return the log."""
    log = read_log(path)
    replayed, broken_links = replay(log)

    assert seq_gaps(log) == {}
    assert body_seq_mismatches(log) == []
    assert missing_acks(log, acks) == []
    assert broken_links == []
    assert log.rows == replayed
    assert wrong_active_flags(log) == []
    for location in log.heads:
        assert read_pages(engine, location) == log.events[location], location
    return log


def check_quiet_log(engine: Engine, path: Path, acks: Sequence[Ack]) -> None:
    """Assert ``check_log`` and that the log contains exactly the acknowledged changes."""
    log = check_log(engine, path, acks)

    assert len({(ack["id"], ack["version"]) for ack in acks}) == len(acks)
    assert log.heads == dict(Counter(ack["location"] for ack in acks))
    for location in log.heads:
        # Snapshots list active orders by creation, which is their created event's order.
        created = [e["order_id"] for e in log.events[location] if e["kind"] == "order.created"]
        active = [log.rows[order_id] for order_id in created if log.active[order_id]]
        snapshot = engine.snapshot(location)
        assert snapshot.head == log.heads[location]
        assert [order.to_dict() for order in snapshot.orders] == active


# Workload shared by threads and processes.


def run_workload(engine: Engine, worker: int, steps: int, shared: Sequence[str]) -> list[Ack]:
    """Make a mix of creates, transitions, updates and two-change transactions.

    Each worker moves its own orders through the lifecycle with their known
    version, and races the other workers on the ``shared`` orders, where a
    ``VersionConflict`` is expected and not acknowledged. Returns every
    change the engine acknowledged, in call order.
    """
    rng = random.Random(worker)
    own: list[Order] = []
    acks: list[Ack] = []
    for step in range(steps):
        roll = rng.random()
        location = rng.choice(LOCATIONS)
        meta = {"worker": worker, "step": step}

        if roll < 0.2 or not own:
            created = engine.create(ITEMS, location=location, meta=meta, actor=f"w{worker}")
            own.append(created)
            acks.append(created.to_dict())

        elif roll < 0.3:
            with engine.transaction() as tx:
                created = tx.create(ITEMS, location=location, meta=meta)
                confirmed = tx.transition(created.id, "CONFIRMED", expected_version=1)
            own.append(confirmed)
            acks.extend([created.to_dict(), confirmed.to_dict()])

        elif roll < 0.4:
            index = rng.randrange(len(own))
            updated = engine.update(own[index].id, meta=meta, expected_version=own[index].version)
            own[index] = updated
            acks.append(updated.to_dict())

        elif roll < 0.7:
            index = rng.randrange(len(own))
            order = own[index]
            moved = engine.transition(
                order.id, NEXT_STATE[order.state], expected_version=order.version
            )
            if DEFAULT_LIFECYCLE.is_active(moved.state):
                own[index] = moved
            else:
                own.pop(index)
            acks.append(moved.to_dict())

        else:
            current = engine.get(rng.choice(shared))
            try:
                moved = engine.transition(
                    current.id,
                    SHARED_NEXT_STATE[current.state],
                    expected_version=current.version,
                )
            except VersionConflict:
                continue
            acks.append(moved.to_dict())
    return acks


def create_shared(engine: Engine) -> tuple[list[str], list[Ack]]:
    """Create the orders that all workers race on; return their ids and the acks."""
    created = [
        engine.create(ITEMS, location=location, meta={"shared": True})
        for location in LOCATIONS
        for _ in range(SHARED_PER_LOCATION)
    ]
    return [order.id for order in created], [order.to_dict() for order in created]


# Threads.


class Threads(Generic[T]):
    """Threads that run ``target(i)`` for i in 0..count-1, started at construction."""

    def __init__(self, count: int, target: Callable[[int], T]) -> None:
        self._target = target
        self._results: dict[int, T] = {}
        self._errors: dict[int, str] = {}
        self._threads = [
            threading.Thread(target=self._run, args=(index,), name=f"writer-{index}", daemon=True)
            for index in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, index: int) -> None:
        try:
            self._results[index] = self._target(index)
        except BaseException:
            self._errors[index] = traceback.format_exc()

    def alive(self) -> list[str]:
        return [thread.name for thread in self._threads if thread.is_alive()]

    def wait(self) -> None:
        deadline = time.monotonic() + WAIT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def results(self) -> list[T]:
        """Wait for the threads and return their results in order; fail on any error."""
        self.wait()

        assert self.alive() == []
        assert self._errors == {}
        return [self._results[index] for index in range(len(self._threads))]


def run_threads(count: int, target: Callable[[int], T]) -> list[T]:
    return Threads(count, target).results()


def confirm_or_conflict(
    engine: Engine, order_id: str, barrier: threading.Barrier, index: int
) -> Order | VersionConflict:
    barrier.wait()
    try:
        return engine.transition(order_id, "CONFIRMED", expected_version=1)
    except VersionConflict as exc:
        return exc


def create_with_key(engine: Engine, barrier: threading.Barrier, index: int) -> Order:
    barrier.wait()
    return engine.create(
        ITEMS, location="patio", meta={"table": 7}, idempotency_key="table-7-round-1"
    )


# Processes, started with "spawn" so no lock or connection is inherited.


class Processes:
    """Processes started by one test, each killed by its pid if it outlives the test."""

    def __init__(self) -> None:
        self.context: SpawnContext = multiprocessing.get_context("spawn")
        self.started: list[SpawnProcess] = []

    def start(self, target: Callable[..., None], *args: Any) -> None:
        process = self.context.Process(target=target, args=args, daemon=True)
        process.start()
        self.started.append(process)

    def gather(self, results: Any, count: int, barrier: Any) -> list[Any]:
        """Return ``count`` values from the ``results`` queue, ordered by worker number.

        Each worker puts ``(worker, "ok", value)`` or ``(worker, "error", traceback)``.
        The first error breaks ``barrier``, so that the other workers stop
        waiting for the one that failed.
        """
        deadline = time.monotonic() + WAIT
        values: dict[int, Any] = {}
        errors: dict[int, str] = {}
        while len(values) + len(errors) < count:
            try:
                worker, status, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{count - len(values) - len(errors)} processes did not report")
            if status == "ok":
                values[worker] = value
            else:
                errors[worker] = value
                barrier.abort()
        self.join()

        assert errors == {}
        return [values[worker] for worker in sorted(values)]

    def join(self) -> None:
        deadline = time.monotonic() + WAIT
        for process in self.started:
            process.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        for process in self.started:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
            process.join(10)


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        started.stop()


def _report(results: Any, worker: int, work: Callable[[], Any]) -> None:
    try:
        value = work()
    except BaseException:
        results.put((worker, "error", traceback.format_exc()))
    else:
        results.put((worker, "ok", value))


def workload_process(
    url: str, worker: int, steps: int, shared: list[str], barrier: Any, results: Any
) -> None:
    def work() -> list[Ack]:
        with Engine.open(url) as engine:
            barrier.wait()
            return run_workload(engine, worker, steps, shared)

    _report(results, worker, work)


def race_process(url: str, worker: int, order_ids: list[str], barrier: Any, results: Any) -> None:
    """Race on each order in turn, reporting ("won", version) or ("conflict", expected, actual)."""

    def work() -> list[tuple[Any, ...]]:
        outcomes: list[tuple[Any, ...]] = []
        with Engine.open(url) as engine:
            for order_id in order_ids:
                barrier.wait()
                try:
                    order = engine.transition(order_id, "CONFIRMED", expected_version=1)
                except VersionConflict as exc:
                    outcomes.append(("conflict", exc.expected, exc.actual))
                except Exception as exc:
                    # Kept as an outcome so that this worker stays in step
                    # with the others at the barrier.
                    outcomes.append(("error", repr(exc)))
                else:
                    outcomes.append(("won", order.version))
        return outcomes

    _report(results, worker, work)


def idempotent_create_process(url: str, worker: int, barrier: Any, results: Any) -> None:
    def work() -> Ack:
        with Engine.open(url) as engine:
            barrier.wait()
            order = engine.create(
                ITEMS, location="patio", meta={"table": 7}, idempotency_key="table-7-round-1"
            )
        return order.to_dict()

    _report(results, worker, work)


# Fixtures.


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "orderflow.db"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite:///{db_path}{PROCESS_URL_OPTIONS}"


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    with Engine.open(url) as opened:
        yield opened


def confirmed_events(path: Path, order_id: str) -> int:
    with closing(sqlite3.connect(path)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM orderflow_events WHERE order_id = ? AND to_state = 'CONFIRMED'",
            (order_id,),
        ).fetchone()
    return int(count)


# 1 and 2: mixed writers, then the whole log is checked.


def test_threads_mixed_writes(engine: Engine, db_path: Path) -> None:
    shared, acks = create_shared(engine)

    results = run_threads(
        THREADS, lambda worker: run_workload(engine, worker, THREAD_STEPS, shared)
    )

    all_acks = acks + [ack for worker_acks in results for ack in worker_acks]
    assert len(all_acks) > THREADS * THREAD_STEPS // 2
    check_quiet_log(engine, db_path, all_acks)


def test_processes_mixed_writes(
    engine: Engine, url: str, db_path: Path, processes: Processes
) -> None:
    shared, acks = create_shared(engine)
    barrier = processes.context.Barrier(PROCESSES, timeout=WAIT)
    results = processes.context.Queue()

    for worker in range(PROCESSES):
        processes.start(workload_process, url, worker, PROCESS_STEPS, shared, barrier, results)
    reported = processes.gather(results, PROCESSES, barrier)

    all_acks = acks + [ack for worker_acks in reported for ack in worker_acks]
    assert len(all_acks) > PROCESSES * PROCESS_STEPS // 2
    check_quiet_log(engine, db_path, all_acks)


# 3: racers on one (order, expected version).


def test_race_threads_one_winner(engine: Engine, db_path: Path) -> None:
    for _ in range(RACE_ROUNDS):
        order = engine.create(ITEMS)
        barrier = threading.Barrier(RACERS, timeout=WAIT)

        outcomes = run_threads(
            RACERS, functools.partial(confirm_or_conflict, engine, order.id, barrier)
        )

        winners = [outcome for outcome in outcomes if isinstance(outcome, Order)]
        conflicts = [outcome for outcome in outcomes if isinstance(outcome, VersionConflict)]
        assert [(winner.state, winner.version) for winner in winners] == [("CONFIRMED", 2)]
        assert [(c.expected, c.actual) for c in conflicts] == [(1, 2)] * (RACERS - 1)
        assert confirmed_events(db_path, order.id) == 1
        assert engine.get(order.id).version == 2


def test_race_processes_one_winner(
    engine: Engine, url: str, db_path: Path, processes: Processes
) -> None:
    order_ids = [engine.create(ITEMS, location="patio").id for _ in range(RACE_ROUNDS)]
    barrier = processes.context.Barrier(PROCESSES, timeout=WAIT)
    results = processes.context.Queue()

    for worker in range(PROCESSES):
        processes.start(race_process, url, worker, order_ids, barrier, results)
    reported = processes.gather(results, PROCESSES, barrier)

    for round_number, order_id in enumerate(order_ids):
        outcomes = Counter(outcomes[round_number] for outcomes in reported)
        assert outcomes == {("won", 2): 1, ("conflict", 1, 2): PROCESSES - 1}, order_id
        assert confirmed_events(db_path, order_id) == 1


# 4: a reader that polls the log while writers run finds no gap.


def poll_until(
    engine: Engine, finished: Callable[[], bool], pause: Callable[[], None]
) -> dict[str, list[dict[str, Any]]]:
    """Poll every location's log until ``finished()`` and the reader has the whole log.

    Raises AssertionError as soon as a page does not start right after the
    cursor or skips a number, because a later poll could no longer see the
    skipped event.
    """
    seen: dict[str, list[dict[str, Any]]] = {location: [] for location in LOCATIONS}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        done = finished()
        at_head = True
        for location in LOCATIONS:
            cursor = seen[location][-1]["seq"] if seen[location] else 0
            page = engine.events_since(cursor, location=location, limit=25)
            numbers = [event.seq for event in page.events]
            assert numbers == list(range(cursor + 1, cursor + 1 + len(numbers))), location
            assert page.head >= cursor + len(numbers), location
            seen[location].extend(event.to_dict() for event in page.events)
            at_head = at_head and cursor + len(numbers) == page.head
        if done and at_head:
            return seen
        if at_head:
            pause()
    pytest.fail(f"the reader did not reach the head within {WAIT} s")


def test_reader_threads_no_skip(engine: Engine, db_path: Path) -> None:
    shared, acks = create_shared(engine)

    writers = Threads(
        THREADS // 2, lambda worker: run_workload(engine, worker, THREAD_STEPS, shared)
    )
    try:
        seen = poll_until(engine, lambda: not writers.alive(), lambda: time.sleep(0.001))
    finally:
        # The engine fixture must not close the engine under running writers.
        writers.wait()

    log = read_log(db_path)
    for location in LOCATIONS:
        assert seen[location] == log.events[location], location
    check_quiet_log(engine, db_path, acks + [a for r in writers.results() for a in r])


def test_reader_processes_no_skip(
    engine: Engine, url: str, db_path: Path, processes: Processes
) -> None:
    shared, acks = create_shared(engine)
    barrier = processes.context.Barrier(PROCESSES, timeout=WAIT)
    results = processes.context.Queue()
    for worker in range(PROCESSES):
        processes.start(workload_process, url, worker, PROCESS_STEPS, shared, barrier, results)

    # A writer reports after its last commit. Its report is drained while
    # polling, because a process cannot exit before its queue is read.
    drained: list[tuple[int, str, Any]] = []

    def drain() -> None:
        try:
            drained.append(results.get(timeout=0.002))
        except queue.Empty:
            return
        if drained[-1][1] != "ok":
            barrier.abort()

    seen = poll_until(engine, lambda: len(drained) == PROCESSES, drain)
    processes.join()

    assert [status for _, status, _ in drained] == ["ok"] * PROCESSES
    log = read_log(db_path)
    for location in LOCATIONS:
        assert seen[location] == log.events[location], location
    check_quiet_log(engine, db_path, acks + [ack for _, _, a in drained for ack in a])


# 5: the same idempotent create sent at once by many writers.


def test_idempotent_create_threads(engine: Engine, db_path: Path) -> None:
    head = engine.position("patio").head
    barrier = threading.Barrier(RACERS, timeout=WAIT)

    orders = run_threads(RACERS, functools.partial(create_with_key, engine, barrier))

    log = read_log(db_path)
    assert len({order.id for order in orders}) == 1
    assert all(order == orders[0] for order in orders)
    assert [row["id"] for row in log.rows.values()] == [orders[0].id]
    assert log.heads["patio"] == head + 1
    check_quiet_log(engine, db_path, [orders[0].to_dict()])


def test_idempotent_create_processes(
    engine: Engine, url: str, db_path: Path, processes: Processes
) -> None:
    head = engine.position("patio").head
    barrier = processes.context.Barrier(PROCESSES, timeout=WAIT)
    results = processes.context.Queue()

    for worker in range(PROCESSES):
        processes.start(idempotent_create_process, url, worker, barrier, results)
    orders = processes.gather(results, PROCESSES, barrier)

    log = read_log(db_path)
    assert all(order == orders[0] for order in orders)
    assert [row["id"] for row in log.rows.values()] == [orders[0]["id"]]
    assert log.heads["patio"] == head + 1
    check_quiet_log(engine, db_path, [orders[0]])


# Closing the engine while other threads still use it.

CLOSE_SCRIPT = """
import itertools
import json
import sys
import threading

sys.path.insert(0, sys.argv[1])

from orderflow import Engine, StorageError

endings = []
for trial in range(int(sys.argv[3])):
    engine = Engine.open("sqlite:///" + sys.argv[2])
    calls = itertools.count()
    busy = threading.Event()

    def loop(call):
        try:
            while True:
                call()
                if next(calls) >= 40:
                    busy.set()
        except StorageError as exc:
            endings.append(type(exc).__name__)
        except Exception as exc:
            endings.append(repr(exc))

    work = [
        lambda: engine.create([{"name": "Margherita", "quantity": 1}]),
        lambda: engine.create([{"name": "Margherita", "quantity": 1}], location="patio"),
        lambda: engine.events_since(0, limit=20),
        lambda: engine.snapshot(),
    ]
    threads = [threading.Thread(target=loop, args=(call,)) for call in work]
    for thread in threads:
        thread.start()
    busy.wait(30)
    engine.close()
    for thread in threads:
        thread.join(30)
print(json.dumps(sorted(set(endings))))
"""


def test_close_under_load_no_crash(tmp_path: Path) -> None:
    # In a subprocess, because the failure this guards against is a
    # segmentation fault, which would end the test run itself.
    script = tmp_path / "close_under_load.py"
    script.write_text(CLOSE_SCRIPT)
    trials = 20
    repo = Path(__file__).resolve().parent.parent

    finished = subprocess.run(
        [sys.executable, str(script), str(repo), str(tmp_path / "orderflow.db"), str(trials)],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )

    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout) == ["StorageUnavailable"]
