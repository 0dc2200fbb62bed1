"""The engine for async code, on asyncio or trio through anyio.

``AsyncEngine`` runs every database call of the blocking ``Engine`` in a
worker thread, so the event loop never waits on the database, and adds
subscriptions: one feed per location follows the log and fans events out.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio import to_thread

from ._inbox import Inbox
from .broker import DEFAULT_BROKER_URL, Broker, Publication
from .core import validate_location
from .engine import DEFAULT_PAGE, Engine, Health, Transaction
from .errors import EpochMismatch, HistoryTruncated, InvalidRequest, SubscriberDropped
from .feed import Attachment, FeedOptions, FeedSubscriber, LocationFeed
from .lifecycle import Lifecycle
from .models import Event, EventPage, Item, LogPosition, Order, Snapshot
from .storage import DEFAULT_DATABASE_URL, Storage

__all__ = ["AsyncEngine", "EventStream"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncEngine:
    """The order engine for async code.

    Use it as ``async with AsyncEngine.open(url) as engine:``; the block
    owns the feeds' tasks and closes what it opened on exit.
    """

    def __init__(
        self,
        engine: Engine,
        task_group: anyio.abc.TaskGroup,
        *,
        feed_options: FeedOptions | None = None,
        thread_limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.sync = engine
        self.feed_options = feed_options or FeedOptions()
        self._task_group = task_group
        self._limiter = thread_limiter
        self._feeds: dict[str, LocationFeed] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        database: str | Storage = DEFAULT_DATABASE_URL,
        broker: str | Broker = DEFAULT_BROKER_URL,
        *,
        lifecycle: Lifecycle | Mapping[str, Any] | str | Path | None = None,
        clock: Callable[[], datetime] | None = None,
        feed_options: FeedOptions | None = None,
    ) -> AsyncIterator[AsyncEngine]:
        """Open storage and broker from URLs (or objects) for the block's duration."""
        engine = await to_thread.run_sync(
            partial(Engine.open, database, broker, lifecycle=lifecycle, clock=clock)
        )
        try:
            async with cls.wrap(engine, feed_options=feed_options) as async_engine:
                yield async_engine
        finally:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(engine.close)

    @classmethod
    @asynccontextmanager
    async def wrap(
        cls, engine: Engine, *, feed_options: FeedOptions | None = None
    ) -> AsyncIterator[AsyncEngine]:
        """Use an open blocking engine from async code; the engine stays open afterwards."""
        async with anyio.create_task_group() as task_group:
            async_engine = cls(engine, task_group, feed_options=feed_options)
            try:
                yield async_engine
            finally:
                task_group.cancel_scope.cancel()

    @property
    def lifecycle(self) -> Lifecycle:
        return self.sync.lifecycle

    async def _run(self, function: Callable[[], T]) -> T:
        return await to_thread.run_sync(function, limiter=self._limiter)

    # Writes.

    async def create(
        self,
        items: Iterable[Mapping[str, Any] | Item],
        *,
        id: str | None = None,
        location: str = "main",
        meta: Mapping[str, Any] | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """Create an order; see ``Engine.create``."""
        items = list(items)
        return await self._run(
            partial(
                self.sync.create,
                items,
                id=id,
                location=location,
                meta=meta,
                actor=actor,
                idempotency_key=idempotency_key,
            )
        )

    async def transition(
        self,
        order_id: str,
        to: str,
        *,
        expected_version: int | None = None,
        reason: str | None = None,
        actor: str | None = None,
        roles: Iterable[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """Move an order to state ``to``; see ``Engine.transition``."""
        return await self._run(
            partial(
                self.sync.transition,
                order_id,
                to,
                expected_version=expected_version,
                reason=reason,
                actor=actor,
                roles=None if roles is None else frozenset(roles),
                idempotency_key=idempotency_key,
            )
        )

    async def update(
        self,
        order_id: str,
        *,
        items: Iterable[Mapping[str, Any] | Item] | None = None,
        meta: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """Replace an order's items or meta; see ``Engine.update``."""
        return await self._run(
            partial(
                self.sync.update,
                order_id,
                items=None if items is None else list(items),
                meta=meta,
                expected_version=expected_version,
                actor=actor,
                idempotency_key=idempotency_key,
            )
        )

    async def run_transaction(self, function: Callable[[Transaction], T]) -> T:
        """Run ``function(transaction)`` in a worker thread inside one commit.

        The function uses the blocking ``Transaction`` methods; its events are
        published after the commit, and nothing is written if it raises.
        """

        def run() -> T:
            with self.sync.transaction() as transaction:
                return function(transaction)

        return await self._run(run)

    # Reads.

    async def get(self, order_id: str) -> Order:
        return await self._run(partial(self.sync.get, order_id))

    async def history(self, order_id: str) -> list[Event]:
        return await self._run(partial(self.sync.history, order_id))

    async def snapshot(self, location: str = "main") -> Snapshot:
        """Return the active orders and their head, read in one database transaction."""
        return await self._run(partial(self.sync.snapshot, location))

    async def position(self, location: str = "main") -> LogPosition:
        return await self._run(partial(self.sync.position, location))

    async def events_since(
        self,
        since: int,
        *,
        location: str = "main",
        epoch: str | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> EventPage:
        return await self._run(
            partial(self.sync.events_since, since, location=location, epoch=epoch, limit=limit)
        )

    async def health(self) -> Health:
        return await self._run(self.sync.health)

    async def prune(self, location: str = "main", *, older_than: timedelta) -> int:
        return await self._run(partial(self.sync.prune, location, older_than=older_than))

    async def new_epoch(self, location: str = "main") -> str:
        return await self._run(partial(self.sync.new_epoch, location))

    # Feeds and subscriptions.

    async def feed(self, location: str = "main") -> LocationFeed:
        """Return the running feed of ``location``, starting it on first use.

        Raises a ``StorageError`` if the feed could not load its state; it
        keeps retrying in the background.
        """
        location = validate_location(location)
        feed = self._feeds.get(location)
        if feed is None:
            storage = self.sync.storage
            feed = LocationFeed(
                location,
                lifecycle=self.sync.lifecycle,
                read_snapshot=lambda loc: self._run(partial(storage.snapshot, loc)),
                read_events=lambda loc, since, limit: self._run(
                    partial(storage.events_since, loc, since, limit)
                ),
                read_position=lambda loc: self._run(partial(storage.position, loc)),
                open_sources=self._open_sources,
                options=self.feed_options,
            )
            self._feeds[location] = feed
            self._task_group.start_soon(feed.run, name=f"orderflow feed {location}")
        await feed.wait_ready()
        return feed

    @property
    def feeds(self) -> dict[str, LocationFeed]:
        return dict(self._feeds)

    def _open_sources(self, location: str, inbox: Inbox[Publication]) -> Callable[[], None]:
        """Route publications of ``location`` into ``inbox``; return the undo."""
        engine = self.sync
        subscription = engine.broker.subscribe([location], inbox=inbox)
        remove_listener: Callable[[], None] | None = None
        if not engine.broker.in_process:
            # A networked broker brings this process's own events back after
            # a round trip; hand them over directly as well.
            def listen(events: Iterable[Event]) -> None:
                for event in events:
                    if event.order.location == location:
                        inbox.put(Publication(location, event.seq, event))

            remove_listener = engine.add_listener(listen)

        def close() -> None:
            subscription.close()
            if remove_listener is not None:
                remove_listener()

        return close

    @asynccontextmanager
    async def subscribe(
        self, location: str = "main", *, since: int | None = None, epoch: str | None = None
    ) -> AsyncIterator[EventStream]:
        """Subscribe to the events of ``location``, strictly in seq order.

        Without ``since`` the stream starts at the head and carries the
        snapshot it is consistent with (``stream.snapshot``). With ``since``
        (and the ``epoch`` it belongs to) it yields every event after it,
        from the log first and then live, with no gap and no duplicate at
        the switch. Raises ``EpochMismatch`` or ``HistoryTruncated`` when
        the log cannot serve ``since``.
        """
        feed = await self.feed(location)
        if since is not None:
            if isinstance(since, bool) or not isinstance(since, int) or since < 0:
                raise InvalidRequest(
                    "since", f"must be a whole number of at least 0, not {since!r}"
                )
            if epoch is not None and epoch != feed.epoch:
                raise EpochMismatch(feed.location, since, epoch, feed.epoch)
            if since < feed.oldest:
                raise HistoryTruncated(feed.location, since, feed.oldest)
            if since > feed.head:
                raise InvalidRequest(
                    "since",
                    f"is {since}, beyond the head {feed.head} of location {feed.location!r}; "
                    "subscribe without since to start from a snapshot",
                )
        stream = EventStream(feed, since)
        try:
            yield stream
        finally:
            stream.close()


class EventStream:
    """Events of one location after a starting point, as an async iterator.

    It never skips or repeats an event. If it falls so far behind that the
    feed drops it, it reads the missing events from the log and rejoins,
    so a slow consumer costs database reads, not events. Raises
    ``SubscriberDropped`` when the log got a new epoch or the engine closes.
    """

    def __init__(self, feed: LocationFeed, since: int | None) -> None:
        self._feed = feed
        attachment = feed.attach(since, feed.epoch if since is not None else None)
        self.epoch = attachment.epoch
        self.snapshot: Snapshot | None = attachment.snapshot if since is None else None
        self.cursor = attachment.head if since is None else since
        self._subscriber: FeedSubscriber = attachment.subscriber
        self._ready: deque[Event] = deque()
        self._log_until = 0
        self._start_from(attachment)

    def _start_from(self, attachment: Attachment) -> None:
        self._subscriber = attachment.subscriber
        if attachment.replay is not None:
            self._ready.extend(attachment.replay)
        elif attachment.kind == "resumed":
            self._log_until = attachment.head

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._ready:
                event = self._ready.popleft()
                if event.seq <= self.cursor:
                    continue
                if event.seq == self.cursor + 1:
                    self.cursor = event.seq
                    return event
                # A hole before this event: read it from the log first.
                self._ready.appendleft(event)
                await self._read_log(event.seq - 1)
                continue
            if self._log_until > self.cursor:
                await self._read_log(self._log_until)
                continue
            try:
                self._ready.extend(await self._subscriber.next_batch())
            except SubscriberDropped as exc:
                if exc.reason != "slow_consumer":
                    raise
                self._rejoin()

    async def _read_log(self, until: int) -> None:
        """Put the next page of events in (cursor, until] in front of the queue."""
        batch = await self._feed.read_page(self.cursor, until)
        self._ready.extendleft(reversed(batch))

    def _rejoin(self) -> None:
        logger.info(
            "subscriber of location %r fell behind at seq %d; reading the log to catch up",
            self._feed.location,
            self.cursor,
        )
        attachment = self._feed.attach(self.cursor, self._feed.epoch)
        if attachment.kind != "resumed":
            attachment.subscriber.close()
            raise SubscriberDropped("truncated")
        self._ready.clear()
        self._start_from(attachment)

    def close(self) -> None:
        self._subscriber.close()
