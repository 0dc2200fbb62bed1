"""The async engine: worker-thread calls, subscriptions and publication after commit."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from orderflow import Engine, EpochMismatch, HistoryTruncated, InvalidRequest, SubscriberDropped
from orderflow.aio import AsyncEngine
from orderflow.broker import MemoryBroker, Publication
from orderflow.feed import FeedOptions
from orderflow.models import Event

pytestmark = pytest.mark.anyio

ITEMS = [{"name": "Tortilla", "quantity": 1}]
FAST = FeedOptions(poll_interval=0.05, head_check_interval=0.2, replay_buffer=8, subscriber_queue=4)


class FailingBroker(MemoryBroker):
    """A broker whose publish always raises, like a client library with a bug."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def publish(self, event: Event) -> None:
        self.attempts += 1
        raise ConnectionError("broker is down")


class DroppingBroker(MemoryBroker):
    """A broker that loses every publication: subscribers must poll the log."""

    def publish(self, event: Event) -> None:
        pass


async def collect(stream: Any, count: int, timeout: float = 10.0) -> list[Event]:
    events: list[Event] = []
    with anyio.fail_after(timeout):
        async for event in stream:
            events.append(event)
            if len(events) == count:
                break
    return events


async def test_subscribe_from_zero_sees_history_then_live(sqlite_url: str) -> None:
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        order = await engine.create(ITEMS)
        await engine.transition(order.id, "CONFIRMED")

        async with engine.subscribe(since=0) as stream:

            async def write() -> None:
                await engine.transition(order.id, "PREPARING")
                await engine.transition(order.id, "READY")

            async with anyio.create_task_group() as group:
                group.start_soon(write)
                events = await collect(stream, 4)

    assert [event.seq for event in events] == [1, 2, 3, 4]
    assert [event.to_state for event in events] == ["PENDING", "CONFIRMED", "PREPARING", "READY"]


async def test_subscribe_without_since_carries_snapshot(sqlite_url: str) -> None:
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        first = await engine.create(ITEMS)
        async with engine.subscribe() as stream:
            assert stream.snapshot is not None
            assert stream.snapshot.head == 1
            assert [order.id for order in stream.snapshot.orders] == [first.id]
            second = await engine.create(ITEMS)
            events = await collect(stream, 1)
    assert events[0].seq == 2
    assert events[0].order_id == second.id


async def test_switch_to_live_under_writer_has_no_gap(sqlite_url: str) -> None:
    """Subscribers that join while a writer runs get every seq exactly once."""
    total = 60
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        order = await engine.create(ITEMS)
        await engine.transition(order.id, "CONFIRMED")
        await engine.transition(order.id, "PREPARING")
        final_head = 3 + total
        received: dict[int, list[int]] = {}

        async def write() -> None:
            for index in range(total):
                await engine.transition(order.id, "READY" if index % 2 == 0 else "PREPARING")

        async def follow(since: int) -> None:
            async with engine.subscribe(since=since) as stream:
                received[since] = [event.seq for event in await collect(stream, final_head - since)]

        async with anyio.create_task_group() as group:
            group.start_soon(write)
            for since in (0, 1, 3):
                group.start_soon(follow, since)

    for since in (0, 1, 3):
        assert received[since] == list(range(since + 1, final_head + 1))


async def test_slow_subscriber_catches_up_from_log(sqlite_url: str) -> None:
    """A subscriber that overflows its queue reads the log and loses nothing."""
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        orders = [await engine.create(ITEMS) for _ in range(3)]
        async with engine.subscribe(since=3) as stream:
            for order in orders:
                await engine.transition(order.id, "CONFIRMED")
                await engine.transition(order.id, "PREPARING")
                await engine.transition(order.id, "READY")
            feed = await engine.feed()
            with anyio.fail_after(5):
                await feed.wait_for_head(12)
            events = await collect(stream, 9)
    assert [event.seq for event in events] == list(range(4, 13))


async def test_lost_publications_are_repaired_by_polling(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dropped.db'}"
    async with AsyncEngine.open(url, DroppingBroker(), feed_options=FAST) as engine:
        async with engine.subscribe(since=0) as stream:
            order = await engine.create(ITEMS)
            await engine.transition(order.id, "CONFIRMED")
            events = await collect(stream, 2)
        feed = await engine.feed()
    assert [event.seq for event in events] == [1, 2]
    assert feed.catch_ups > 0


async def test_subscribe_rejects_foreign_epoch(sqlite_url: str) -> None:
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        await engine.create(ITEMS)
        with pytest.raises(EpochMismatch):
            async with engine.subscribe(since=0, epoch="not-this-one"):
                pass


async def test_subscribe_rejects_since_beyond_head(sqlite_url: str) -> None:
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        await engine.create(ITEMS)
        with pytest.raises(InvalidRequest) as caught:
            async with engine.subscribe(since=5):
                pass
    assert caught.value.field == "since"


async def test_subscribe_below_retained_range(sqlite_url: str) -> None:
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        order = await engine.create(ITEMS)
        for target in ("CONFIRMED", "PREPARING", "READY", "COMPLETED"):
            await engine.transition(order.id, target)
        await engine.create(ITEMS)
        pruned = await engine.prune(older_than=timedelta(0))
        assert pruned == 5
        # The feed learns the new retained range when it reloads; a fresh
        # engine has a fresh feed.
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        with pytest.raises(HistoryTruncated):
            async with engine.subscribe(since=2):
                pass
        async with engine.subscribe(since=5) as stream:
            third = await engine.create(ITEMS)
            events = await collect(stream, 2)
    assert [event.seq for event in events] == [6, 7]
    assert events[1].order_id == third.id


async def test_new_epoch_drops_subscribers(sqlite_url: str) -> None:
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        await engine.create(ITEMS)
        async with engine.subscribe(since=1) as stream:
            await engine.new_epoch()
            with pytest.raises(SubscriberDropped) as caught, anyio.fail_after(5):
                async for _ in stream:
                    pass
    assert caught.value.reason == "epoch"


async def test_broker_failure_never_fails_transition(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = FailingBroker()
    url = f"sqlite:///{tmp_path / 'failing.db'}"
    caplog.set_level(logging.WARNING, logger="orderflow.engine")
    async with AsyncEngine.open(url, broker, feed_options=FAST) as engine:
        order = await engine.create(ITEMS)
        moved = await engine.transition(order.id, "CONFIRMED")
        stored = await engine.get(order.id)
    assert moved.version == 2
    assert stored.state == "CONFIRMED"
    assert broker.attempts == 2
    assert "publishing event 1 of location 'main'" in caplog.text


def test_listener_runs_after_commit(tmp_path: Path) -> None:
    """When a listener runs, another connection already sees the committed row."""
    path = tmp_path / "visible.db"
    seen: list[tuple[int, str | None]] = []

    def listener(events: Iterable[Event]) -> None:
        with sqlite3.connect(path) as other:
            for event in events:
                row = other.execute(
                    "SELECT state FROM orderflow_orders WHERE id = ?", (event.order_id,)
                ).fetchone()
                seen.append((event.seq, row[0] if row else None))

    with Engine.open(f"sqlite:///{path}") as engine:
        engine.add_listener(listener)
        order = engine.create(ITEMS)
        engine.transition(order.id, "CONFIRMED")
    assert seen == [(1, "PENDING"), (2, "CONFIRMED")]


def test_rolled_back_transaction_publishes_nothing(engine: Engine) -> None:
    subscription = engine.broker.subscribe()

    class Abort(Exception):
        pass

    def create_then_fail() -> None:
        with engine.transaction() as tx:
            tx.create(ITEMS)
            raise Abort

    with pytest.raises(Abort):
        create_then_fail()
    committed = engine.create(ITEMS)
    publications: list[Publication] = subscription.receive_nowait()
    subscription.close()
    assert [(p.seq, p.event.order_id if p.event else None) for p in publications] == [
        (1, committed.id)
    ]


def test_nested_transaction_publishes_at_outermost_commit(engine: Engine) -> None:
    subscription = engine.broker.subscribe()
    with engine.transaction() as outer:
        first = outer.create(ITEMS)
        with engine.transaction() as inner:
            inner.transition(first.id, "CONFIRMED")
            assert subscription.receive_nowait() == []
        assert subscription.receive_nowait() == []
    published = [p.seq for p in subscription.receive_nowait()]
    subscription.close()
    assert published == [1, 2]


async def test_engine_calls_run_on_worker_threads(sqlite_url: str) -> None:
    """A slow database call does not stop other tasks of the event loop."""
    async with AsyncEngine.open(sqlite_url, feed_options=FAST) as engine:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await anyio.sleep(0.005)

        def slow(tx: Any) -> None:
            import time

            time.sleep(0.2)
            tx.create(ITEMS)

        async with anyio.create_task_group() as group:
            group.start_soon(tick)
            await engine.run_transaction(slow)
            group.cancel_scope.cancel()
    assert ticks >= 10
