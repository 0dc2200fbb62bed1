"""The per-location feed: committed events, strictly in seq order, to many subscribers.

One feed runs per location in each async engine. It hears publications from
the broker (and, with a networked broker, from its own engine in-process)
and passes events on only in seq order:

- an event with seq <= head is a duplicate and is dropped;
- seq == head + 1 is applied and fanned out;
- anything else (a gap, or a notice without the event) makes the feed read
  the missing events from the database first.

Brokers lose publications, so the feed also reads the log when nothing has
arrived for ``poll_interval`` seconds, and at least every
``head_check_interval`` seconds even while publications flow.

The feed keeps the location's active orders at its head, with their digest,
so a snapshot costs no database read, and the last ``replay_buffer`` events,
so most resumes cost none either.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc

from ._inbox import Inbox
from ._logging import RateLimitedLog
from .broker import Publication
from .digest import contribution, format_digest
from .errors import HistoryTruncated, StorageError, SubscriberDropped
from .models import Event, EventPage, LogPosition, Order, Snapshot, dumps

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

__all__ = ["Attachment", "FeedOptions", "FeedSubscriber", "LocationFeed"]

logger = logging.getLogger(__name__)

READ_PAGE = 1000


@dataclass(frozen=True, slots=True)
class FeedOptions:
    """Timing and size settings of a feed.

    ``poll_interval`` and ``head_check_interval`` are in seconds.
    ``subscriber_queue`` is how many events a subscriber may fall behind
    before the feed drops it.
    """

    poll_interval: float = 0.5
    head_check_interval: float = 5.0
    replay_buffer: int = 1000
    subscriber_queue: int = 1000


class FeedSubscriber:
    """One consumer's queue of events with seq > the head it attached at."""

    __slots__ = ("_feed", "_max", "_queue", "_wakeup", "ended")

    def __init__(self, feed: LocationFeed, max_queue: int) -> None:
        self._feed = feed
        self._max = max_queue
        self._queue: deque[Event] = deque()
        self._wakeup: anyio.Event | None = None
        self.ended: str | None = None

    def _push(self, event: Event) -> None:
        if self.ended is not None:
            return
        if len(self._queue) >= self._max:
            self._end("slow_consumer")
            return
        self._queue.append(event)
        if self._wakeup is not None:
            self._wakeup.set()

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._feed._subscribers.discard(self)
            if self._wakeup is not None:
                self._wakeup.set()

    def pending(self) -> int:
        return len(self._queue)

    async def next_batch(self) -> list[Event]:
        """Wait for events and return all that are queued.

        Raises ``SubscriberDropped`` once the feed ended this subscriber and
        the queue is empty. On ``slow_consumer`` it raises at once and
        discards the queue, because the consumer must resume from the log.
        """
        while not self._queue:
            if self.ended is not None:
                raise SubscriberDropped(self.ended)
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
            self._wakeup = None
        if self.ended == "slow_consumer":
            self._queue.clear()
            raise SubscriberDropped(self.ended)
        batch = list(self._queue)
        self._queue.clear()
        return batch

    def close(self) -> None:
        self._feed._subscribers.discard(self)
        self.ended = self.ended or "closed"


@dataclass(slots=True)
class Attachment:
    """The start of a new subscriber: from a snapshot or by resuming.

    For ``resumed``, ``replay`` contains the events in (since, head] when the
    feed still has them in memory; None means they must be read from the
    log (``LocationFeed.read_page``).
    """

    kind: Literal["snapshot", "resumed"]
    epoch: str
    head: int
    subscriber: FeedSubscriber
    since: int | None = None
    replay: list[Event] | None = None
    snapshot: Snapshot | None = None
    snapshot_json: str | None = None


class LocationFeed:
    """The feed of one location. Start it with ``run`` in a task group."""

    def __init__(
        self,
        location: str,
        *,
        lifecycle: Lifecycle,
        read_snapshot: Callable[[str], Awaitable[Snapshot]],
        read_events: Callable[[str, int, int], Awaitable[EventPage]],
        read_position: Callable[[str], Awaitable[LogPosition]],
        open_sources: Callable[[str, Inbox[Publication]], Callable[[], None]],
        options: FeedOptions,
    ) -> None:
        self.location = location
        self.options = options
        self._lifecycle = lifecycle
        self._read_snapshot = read_snapshot
        self._read_events = read_events
        self._read_position = read_position
        self._open_sources = open_sources

        self.epoch = ""
        self.head = 0
        self.oldest = 0
        # Each active order with its share of the digest. The share stays None
        # until the digest is next read, because a burst changes one order
        # many times between two heartbeats.
        self._orders: dict[str, tuple[Order, int | None]] = {}
        self._unhashed: set[str] = set()
        self._digest_sum = 0
        self._snapshot_json: str | None = None
        self._recent: deque[Event] = deque(maxlen=options.replay_buffer)
        self._subscribers: set[FeedSubscriber] = set()
        self._inbox: Inbox[Publication] = Inbox()
        self._last_check = 0.0
        self._first_attempt = anyio.Event()
        self._ready = False
        self._start_error: BaseException | None = None
        self._errors = RateLimitedLog(logger)
        self.catch_ups = 0
        self.applied = 0
        self._head_waiters: list[tuple[int, anyio.Event]] = []

    # State at the head.

    @property
    def digest(self) -> str:
        if self._unhashed:
            for order_id in self._unhashed:
                order, _ = self._orders[order_id]
                share = contribution(order.id, order.version)
                self._orders[order_id] = (order, share)
                self._digest_sum += share
            self._unhashed.clear()
        return format_digest(self._digest_sum)

    @property
    def ready(self) -> bool:
        return self._ready

    def orders(self) -> list[Order]:
        return [order for order, _ in self._orders.values()]

    def snapshot(self) -> Snapshot:
        return Snapshot(self.location, self.epoch, self.head, self.digest, tuple(self.orders()))

    def snapshot_json(self) -> str:
        """Return the JSON body of ``GET /orders/active`` at the head, built once per head."""
        if self._snapshot_json is None:
            orders = ",".join(order.to_json() for order, _ in self._orders.values())
            self._snapshot_json = (
                f'{{"location":{dumps(self.location)},"epoch":{dumps(self.epoch)},'
                f'"head":{self.head},"digest":"{self.digest}","orders":[{orders}]}}'
            )
        return self._snapshot_json

    async def wait_for_head(self, seq: int) -> None:
        """Wait until the feed has applied event ``seq``."""
        if self.head >= seq:
            return
        event = anyio.Event()
        self._head_waiters.append((seq, event))
        await event.wait()

    async def catch_up_to(self, seq: int, timeout: float) -> bool:
        """Read the log now and wait up to ``timeout`` seconds until event ``seq`` is applied.

        Returns whether the head reached ``seq``. Call it only for a seq the
        log already has, such as one a screen got from another node.
        """
        if self.head >= seq:
            return True
        # A notice for seq makes the loop read the log at once, not at its next poll.
        self._inbox.put(Publication(self.location, seq, None))
        with anyio.move_on_after(timeout):
            await self.wait_for_head(seq)
        return self.head >= seq

    def _wake_head_waiters(self) -> None:
        waiting = []
        for seq, event in self._head_waiters:
            if self.head >= seq:
                event.set()
            else:
                waiting.append((seq, event))
        self._head_waiters = waiting

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    async def wait_ready(self) -> None:
        """Wait for the first load; raise its error if the database was unreachable."""
        await self._first_attempt.wait()
        if not self._ready:
            if self._start_error is not None:
                raise self._start_error
            raise StorageError(f"the feed of location {self.location!r} is not ready")

    # Subscribers.

    def attach(
        self, since: int | None, epoch: str | None, max_replay: int | None = None
    ) -> Attachment:
        """Register a subscriber at the head and return how it starts.

        Runs without awaiting, so no event can slip between the starting
        point and the subscriber's queue. The rules: a resume needs the
        current epoch, ``oldest <= since <= head`` and, if ``max_replay`` is
        given, ``head - since <= max_replay``; anything else gets a snapshot.
        """
        subscriber = FeedSubscriber(self, self.options.subscriber_queue)
        self._subscribers.add(subscriber)
        if since is None or not self._resumable(since, epoch, max_replay):
            return Attachment(
                "snapshot",
                self.epoch,
                self.head,
                subscriber,
                snapshot=self.snapshot(),
                snapshot_json=self.snapshot_json(),
            )
        return Attachment(
            "resumed",
            self.epoch,
            self.head,
            subscriber,
            since=since,
            replay=self._from_memory(since),
        )

    def _resumable(self, since: int, epoch: str | None, max_replay: int | None) -> bool:
        return (
            bool(epoch)
            and epoch == self.epoch
            and self.oldest <= since <= self.head
            and (max_replay is None or self.head - since <= max_replay)
        )

    def _from_memory(self, since: int) -> list[Event] | None:
        if since == self.head:
            return []
        recent = self._recent
        if not recent or recent[0].seq > since + 1:
            return None
        start = since + 1 - recent[0].seq
        return [recent[i] for i in range(start, len(recent))]

    async def read_page(self, since: int, until: int) -> list[Event]:
        """Return the next events after ``since`` and up to ``until``, from memory or the log.

        Call it again from the last seq returned until ``until`` is reached.
        Raises ``StorageError`` if the log has no event after ``since``
        although ``until`` is beyond it.
        """
        in_memory = self._from_memory(since)
        if in_memory is not None:
            batch = [event for event in in_memory if event.seq <= until]
        else:
            page = await self._read_events(self.location, since, READ_PAGE)
            batch = [event for event in page.events if event.seq <= until]
        if not batch and since < until:
            raise StorageError(
                f"the log of location {self.location!r} has no events after seq "
                f"{since} although the head was {until}"
            )
        return batch

    def _end_all(self, reason: str) -> None:
        for subscriber in list(self._subscribers):
            subscriber._end(reason)

    # The loop.

    async def run(self) -> None:
        """Load the state, then follow the log until cancelled."""
        close_sources = self._open_sources(self.location, self._inbox)
        logger.info("feed of location %r started", self.location)
        try:
            await self._start()
            while True:
                await self._step()
        finally:
            close_sources()
            self._inbox.release()
            self._end_all("shutdown")
            logger.info(
                "feed of location %r stopped at seq %d (applied %d events, %d log reads)",
                self.location,
                self.head,
                self.applied,
                self.catch_ups,
            )

    async def _start(self) -> None:
        delay = self.options.poll_interval
        while True:
            try:
                await self._reload()
            except StorageError as exc:
                self._start_error = exc
                self._first_attempt.set()
                self._errors.log(
                    logging.WARNING,
                    "start",
                    "feed of location %r cannot load its state, retrying in %.1f s: %s",
                    self.location,
                    delay,
                    exc,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._ready = True
            self._start_error = None
            self._first_attempt.set()
            return

    async def _reload(self) -> None:
        """Replace the state with a fresh snapshot from the database."""
        snapshot = await self._read_snapshot(self.location)
        epoch_changed = bool(self.epoch) and snapshot.epoch != self.epoch
        went_back = snapshot.head < self.head
        self.epoch = snapshot.epoch
        self.head = snapshot.head
        self._orders = {order.id: (order, None) for order in snapshot.orders}
        self._unhashed = set(self._orders)
        self._digest_sum = 0
        self._snapshot_json = None
        self._recent.clear()
        self._last_check = time.monotonic()
        # The retained range only decides whether a resume is possible; if
        # pruning moves it later, read_range raises HistoryTruncated instead.
        self.oldest = (await self._read_position(self.location)).oldest
        if epoch_changed or went_back:
            logger.warning(
                "feed of location %r reloaded at epoch %s head %d; dropping %d subscribers",
                self.location,
                self.epoch,
                self.head,
                len(self._subscribers),
            )
            self._end_all("epoch")

    async def _step(self) -> None:
        publications: list[Publication] | None = None
        with anyio.move_on_after(self.options.poll_interval):
            publications = await self._inbox.get()
        if publications is not None:
            for publication in publications:
                await self._offer(publication)
        if (
            publications is None
            or time.monotonic() - self._last_check >= self.options.head_check_interval
        ):
            await self._catch_up()

    async def _offer(self, publication: Publication) -> None:
        if publication.location != self.location or publication.seq <= self.head:
            return
        if publication.seq == self.head + 1 and publication.event is not None:
            self._apply(publication.event)
            return
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Read and apply every event after the head that the log has."""
        self.catch_ups += 1
        try:
            while True:
                page = await self._read_events(self.location, self.head, READ_PAGE)
                if page.epoch != self.epoch:
                    await self._reload()
                    return
                for event in page.events:
                    if event.seq == self.head + 1:
                        self._apply(event)
                if len(page.events) < READ_PAGE:
                    break
        except HistoryTruncated:
            logger.warning(
                "feed of location %r fell behind the retained log at seq %d; reloading",
                self.location,
                self.head,
            )
            await self._reload()
            self._end_all("truncated")
        except StorageError as exc:
            self._errors.log(
                logging.WARNING,
                "catch_up",
                "feed of location %r cannot read the log after seq %d, retrying: %s",
                self.location,
                self.head,
                exc,
            )
            return
        self._errors.reset("catch_up")
        self._last_check = time.monotonic()

    def _apply(self, event: Event) -> None:
        order = event.order
        previous = self._orders.get(order.id)
        if previous is not None and previous[1] is not None:
            self._digest_sum -= previous[1]
        if self._lifecycle.is_active(order.state):
            # Assigning to an existing key keeps its place, so the orders
            # stay in creation order, as in a snapshot read from the database.
            self._orders[order.id] = (order, None)
            self._unhashed.add(order.id)
        elif previous is not None:
            del self._orders[order.id]
            self._unhashed.discard(order.id)
        self.head = event.seq
        self._snapshot_json = None
        self._recent.append(event)
        self.applied += 1
        for subscriber in tuple(self._subscribers):
            subscriber._push(event)
        if self._head_waiters:
            self._wake_head_waiters()
