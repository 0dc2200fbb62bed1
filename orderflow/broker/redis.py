"""The Redis broker: publications over Redis pub/sub, for several server nodes.

Each location has its own channel, ``{prefix}:events:{location}``. A message
is the event's JSON text. An event larger than ``max_publication_bytes`` is
replaced by a notice ``{"notice": true, "location": ..., "seq": ...}``, and
the subscriber reads that event from the database log.

redis-py's blocking client runs in background threads, so the broker behaves
the same whether the consumer runs on asyncio, on trio or in plain threads:

- The publisher thread sends what ``publish`` queued, in order, in pipelined
  batches. While Redis cannot be reached it drops publications (counted and
  logged) and probes Redis with backoff, because readers repair every loss
  from the event log. The queue is bounded, so memory stays bounded too.
- The listener thread owns the PubSub connection and puts publications into
  the subscribers' inboxes. It runs while at least one subscription is open.
  Only this thread touches the PubSub: subscription changes are handed to it
  and applied between reads. On a connection error it logs the loss,
  reconnects with capped exponential backoff and jitter, resubscribes every
  channel and logs the return.

Redis pub/sub delivers at most once. Publications sent while the listener is
disconnected, or before Redis confirmed a new subscription, are lost; the
feed covers that by reading the log on a gap, on a notice, when the broker
is silent, and every few seconds regardless.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.retry import Retry

from .._inbox import Inbox
from .._logging import RateLimitedLog
from ..errors import BrokerError, ConfigurationError
from ..models import Event, dumps
from .base import BrokerHealth, Publication
from .memory import InboxSubscription

__all__ = ["RedisBroker", "backoff_delay"]

logger = logging.getLogger(__name__)

DEFAULT_CHANNEL_PREFIX = "orderflow"
DEFAULT_MAX_PUBLICATION_BYTES = 65_536
# A notice for a 64-character location and a 19-digit seq takes about 110
# bytes; a lower limit would turn every event into a notice.
MIN_PUBLICATION_BYTES = 256
MAX_BATCH = 500

# Query options read by orderflow and removed before redis-py parses the URL.
_ORDERFLOW_OPTIONS = ("channel_prefix", "max_publication_bytes")
# Query options that redis-py's URL parser passes on as text (checked in redis-py
# 8.2). The options it converts to numbers or flags are URL_QUERY_ARGUMENT_PARSERS.
_REDIS_TEXT_OPTIONS = frozenset(
    {
        "client_name",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_ciphers",
        "ssl_keyfile",
    }
)
# Characters that Redis treats as glob syntax in PSUBSCRIBE patterns.
_GLOB_CHARACTERS = frozenset("*?[]\\")
_CONNECTION_ERRORS = (redis.exceptions.RedisError, OSError)
_RANDOM = random.Random()


def backoff_delay(
    attempt: int, minimum: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Return how long to wait, in seconds, before reconnect attempt ``attempt`` (from 0).

    The base doubles from ``minimum`` up to ``maximum``, and the wait is a
    random point in the upper half of the base. The jitter spreads the
    reconnects of many nodes, and the lower bound keeps a retry loop from
    spinning.
    """
    base = min(maximum, minimum * 2.0 ** min(attempt, 32))
    source = rng if rng is not None else _RANDOM
    return base / 2 + source.uniform(0.0, base / 2)


@dataclass(frozen=True, slots=True)
class _RedisURL:
    redis_url: str
    display_url: str
    channel_prefix: str
    max_publication_bytes: int


def _hide_password(parts: SplitResult) -> str:
    if parts.password is None:
        return urlunsplit(parts)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _parse_url(url: str) -> _RedisURL:
    """Split a broker URL into redis-py's URL and orderflow's options."""
    parts = urlsplit(url)
    display_url = _hide_password(parts)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"invalid Redis broker URL {display_url!r}: the scheme must be redis:// or rediss://"
        )

    options: dict[str, str] = {}
    redis_options: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _ORDERFLOW_OPTIONS:
            if name in options:
                raise ConfigurationError(
                    f"option {name!r} appears twice in Redis broker URL {display_url!r}"
                )
            options[name] = value
        elif name in URL_QUERY_ARGUMENT_PARSERS or name in _REDIS_TEXT_OPTIONS:
            redis_options.append((name, value))
        else:
            raise ConfigurationError(
                f"unknown option {name!r} in Redis broker URL {display_url!r}; orderflow "
                f"reads {', '.join(_ORDERFLOW_OPTIONS)} and passes redis-py's own options on"
            )

    prefix = options.get("channel_prefix", DEFAULT_CHANNEL_PREFIX)
    if not prefix or any(c.isspace() or c in _GLOB_CHARACTERS for c in prefix):
        raise ConfigurationError(
            f"invalid channel_prefix {prefix!r} in Redis broker URL {display_url!r}; use a "
            "non-empty name without spaces or the characters * ? [ ] \\"
        )

    raw_limit = options.get("max_publication_bytes", str(DEFAULT_MAX_PUBLICATION_BYTES))
    try:
        limit = int(raw_limit)
    except ValueError:
        limit = 0
    if limit < MIN_PUBLICATION_BYTES:
        raise ConfigurationError(
            f"invalid max_publication_bytes {raw_limit!r} in Redis broker URL "
            f"{display_url!r}; use a whole number of bytes of at least {MIN_PUBLICATION_BYTES}"
        )

    redis_url = urlunsplit(parts._replace(query=urlencode(redis_options)))
    return _RedisURL(redis_url, display_url, prefix, limit)


class RedisBroker:
    """Publish-subscribe over Redis for engines in several processes or hosts.

    Build it with ``RedisBroker.from_url("redis://[:password@]host:port/db")``;
    the query options ``channel_prefix`` (default ``orderflow``) and
    ``max_publication_bytes`` (default 65536) belong to orderflow, and the
    others go to redis-py. ``publish`` only queues the event, so it never
    waits for the network and never raises. Publications queue (up to
    ``max_queued``) until ``start()``.

    A new subscription starts receiving once the listener thread has
    subscribed and Redis has confirmed it; ``wait_subscribed`` blocks until
    then. Timings are in seconds: ``ping_interval`` is how long a connection
    may stay silent before the broker sends PING (and how long it waits for
    the reply), and ``min_reconnect_delay`` and ``max_reconnect_delay`` bound
    the backoff between reconnect attempts.
    """

    def __init__(
        self,
        url: str,
        *,
        max_queued: int = 10_000,
        ping_interval: float = 5.0,
        min_reconnect_delay: float = 0.1,
        max_reconnect_delay: float = 5.0,
        socket_timeout: float = 2.0,
        join_timeout: float = 2.0,
    ) -> None:
        config = _parse_url(url)
        self.channel_prefix = config.channel_prefix
        self.max_publication_bytes = config.max_publication_bytes
        self.ping_interval = ping_interval
        self.min_reconnect_delay = min_reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.join_timeout = join_timeout
        self._display_url = config.display_url
        self._channel_base = f"{config.channel_prefix}:events:"
        self._pattern = f"{self._channel_base}*"
        try:
            # redis-py must not retry on its own: the threads here retry with
            # their own backoff and keep health() truthful meanwhile.
            self._client: redis.Redis = redis.Redis.from_url(
                config.redis_url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=socket_timeout,
                socket_timeout=socket_timeout,
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"invalid Redis broker URL {self._display_url!r}: {exc}"
            ) from exc

        self._lock = threading.Lock()
        self._subscribed = threading.Condition(self._lock)
        self._subscriptions: tuple[InboxSubscription, ...] = ()
        self._version = 0
        self._listener: _Listener | None = None
        self._old_listeners: list[_Listener] = []
        self._publisher = _Publisher(self, max_queued)
        self._started = False
        self._closed = False
        self._log = RateLimitedLog(logger)
        self.reconnects = 0

    @classmethod
    def from_url(cls, url: str, **tuning: Any) -> RedisBroker:
        """Build (but do not start) a broker; ``tuning`` goes to the constructor."""
        return cls(url, **tuning)

    @property
    def url(self) -> str:
        """The URL this broker was built from, with any password replaced by ``***``."""
        return self._display_url

    @property
    def in_process(self) -> bool:
        return False

    @property
    def sent(self) -> int:
        """How many publications (events or notices) went out to Redis."""
        return self._publisher.sent

    @property
    def dropped(self) -> int:
        """How many publications were dropped: queue full, Redis unreachable or broker closed."""
        return self._publisher.dropped

    @property
    def notices(self) -> int:
        """How many events went out as a notice because they were over the size limit."""
        return self._publisher.notices

    @property
    def listening(self) -> bool:
        """Whether a listener thread is alive, including one that is still stopping."""
        with self._lock:
            listeners = [*self._old_listeners, self._listener]
        return any(listener is not None and listener.alive for listener in listeners)

    def channel(self, location: str) -> str:
        """Return the Redis channel that carries the publications of ``location``."""
        return self._channel_base + location

    def start(self) -> None:
        """Start the publisher thread; idempotent, and fine while Redis is down.

        Raises ``BrokerError`` if the broker was closed.
        """
        with self._lock:
            if self._closed:
                raise BrokerError(f"the Redis broker for {self._display_url} is closed")
            if self._started:
                return
            self._started = True
        logger.info(
            "Redis broker starting for %s with channel prefix %r",
            self._display_url,
            self.channel_prefix,
        )
        self._publisher.start()

    def publish(self, event: Event) -> None:
        """Queue ``event`` for the publisher thread; never blocks and never raises."""
        self._publisher.put(event)

    def subscribe(
        self, locations: Iterable[str] | None = None, inbox: Inbox[Publication] | None = None
    ) -> InboxSubscription:
        """Subscribe to ``locations`` (None for every location).

        Returns at once; the listener thread subscribes in the background.
        With ``inbox``, publications go into that inbox, which stays open
        when the subscription closes.
        """
        subscription = InboxSubscription(locations, self._remove, inbox)
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                self._subscriptions = (*self._subscriptions, subscription)
                self._version += 1
                if self._listener is None:
                    self._old_listeners = [old for old in self._old_listeners if old.alive]
                    self._listener = _Listener(self)
                    self._listener.thread.start()
                else:
                    self._listener.changed.set()
        if closed:
            logger.warning(
                "subscribing to the closed Redis broker for %s; the subscription gets nothing",
                self._display_url,
            )
            subscription.close()
        return subscription

    def _remove(self, subscription: InboxSubscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)
            self._version += 1
            listener = self._listener
            if listener is not None and not self._subscriptions:
                # The last subscription is gone: stop this listener. A later
                # subscription starts a new one, with a fresh connection.
                listener.stop.set()
                self._old_listeners.append(listener)
                self._listener = None
            elif listener is not None:
                listener.changed.set()
            self._subscribed.notify_all()

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until Redis confirmed every channel that the open subscriptions need.

        Returns False if that did not happen within ``timeout`` seconds, for
        example because Redis is down.
        """
        with self._subscribed:
            target = self._version

            def confirmed() -> bool:
                listener = self._listener
                return listener is None or listener.confirmed_version >= target

            return self._subscribed.wait_for(confirmed, timeout)

    def health(self) -> BrokerHealth:
        """Report whether both threads reach Redis; a stopped listener counts as fine."""
        if self._closed:
            return BrokerHealth(False, f"the Redis broker for {self._display_url} is closed")
        if not self._started:
            return BrokerHealth(False, f"the Redis broker for {self._display_url} is not started")
        problems: list[str] = []
        publisher_problem = self._publisher.problem()
        if publisher_problem is not None:
            problems.append(publisher_problem)
        listener = self._listener
        listener_problem = None if listener is None else listener.problem()
        if listener_problem is not None:
            problems.append(listener_problem)
        if problems:
            return BrokerHealth(False, "; ".join(problems))
        return BrokerHealth(True)

    def close(self) -> None:
        """Close every subscription, stop both threads (bounded wait) and disconnect; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            subscriptions = self._subscriptions
        for subscription in subscriptions:
            subscription.close()
        with self._lock:
            listeners = [*self._old_listeners]
            if self._listener is not None:
                self._listener.stop.set()
                listeners.append(self._listener)
                self._listener = None
            self._old_listeners = []
        self._publisher.stop()

        deadline = time.monotonic() + self.join_timeout
        threads = [self._publisher.thread, *(listener.thread for listener in listeners)]
        for thread in threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [thread.name for thread in threads if thread.is_alive()]
        if stuck:
            logger.warning(
                "threads %s of the Redis broker for %s did not stop within %.1f s",
                ", ".join(stuck),
                self._display_url,
                self.join_timeout,
            )
        with contextlib.suppress(*_CONNECTION_ERRORS):
            self._client.close()
        logger.info(
            "Redis broker for %s closed: %d publications sent, %d dropped",
            self._display_url,
            self._publisher.sent,
            self._publisher.dropped,
        )

    # Called from the background threads.

    def _encode(self, event: Event) -> tuple[str, bytes] | None:
        """Return the channel and the message for ``event``: its JSON, or a notice."""
        try:
            location = event.order.location
            payload = event.to_json().encode()
            if len(payload) > self.max_publication_bytes:
                self._log.log(
                    logging.INFO,
                    "notice",
                    "event %d of location %r is %d bytes, over max_publication_bytes=%d; "
                    "publishing a notice so subscribers read it from the event log",
                    event.seq,
                    location,
                    len(payload),
                    self.max_publication_bytes,
                )
                self._publisher.notices += 1
                payload = dumps({"notice": True, "location": location, "seq": event.seq}).encode()
            return self.channel(location), payload
        except Exception as exc:
            self._log.log(
                logging.ERROR,
                "encode",
                "cannot encode publication %r for Redis; dropping it",
                event,
                exc_info=exc,
            )
            return None

    def _needed_channels(self) -> tuple[int, frozenset[str], frozenset[str]]:
        """Return the subscription version, the channels and the patterns it needs."""
        with self._lock:
            version = self._version
            subscriptions = self._subscriptions
        channels: set[str] = set()
        patterns: set[str] = set()
        for subscription in subscriptions:
            if subscription.locations is None:
                patterns.add(self._pattern)
            else:
                channels.update(self.channel(location) for location in subscription.locations)
        return version, frozenset(channels), frozenset(patterns)

    def _confirm(self, listener: _Listener, version: int) -> None:
        with self._subscribed:
            listener.confirmed_version = version
            self._subscribed.notify_all()

    def _deliver(
        self, listener: _Listener, from_pattern: bool, channel: bytes, data: bytes
    ) -> None:
        """Decode one message and put it into every subscription that wants it.

        A subscription to every location hears the message through the
        pattern, and a subscription to named locations through the channel.
        When both kinds exist, Redis sends the message twice, once each way.
        """
        with self._lock:
            # A listener that is stopping may still hear messages, and the
            # listener that replaced it delivers them too.
            if listener is not self._listener:
                return
            subscriptions = self._subscriptions
        publication = self._decode(channel, data)
        if publication is None:
            return
        for subscription in subscriptions:
            if (subscription.locations is None) == from_pattern and subscription.wants(
                publication.location
            ):
                subscription.inbox.put(publication)

    def _decode(self, channel: bytes, data: bytes) -> Publication | None:
        try:
            text = data.decode()
            if text.startswith('{"notice"'):
                notice = json.loads(text)
                return Publication(_location(notice["location"]), _seq(notice["seq"]), None)
            event = Event.from_json(text)
            return Publication(_location(event.order.location), _seq(event.seq), event)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._salvage(channel, data, exc)

    def _salvage(self, channel: bytes, data: bytes, error: Exception) -> Publication | None:
        """Turn an undecodable message into a notice if its seq is readable, else into nothing."""
        name = channel.decode(errors="replace")
        location = (
            name.removeprefix(self._channel_base) if name.startswith(self._channel_base) else ""
        )
        try:
            seq = _seq(json.loads(data)["seq"])
            publication = Publication(_location(location), seq, None)
        except (ValueError, KeyError, TypeError):
            publication = None
        self._log.log(
            logging.WARNING,
            "undecodable",
            "%s an undecodable message on Redis channel %r: %s: %s",
            "ignoring"
            if publication is None
            else f"passing on a notice for seq {publication.seq} instead of",
            name,
            type(error).__name__,
            error,
        )
        return publication


def _seq(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"seq must be a whole number of at least 1, not {value!r}")
    return value


def _location(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"location must be a non-empty string, not {value!r}")
    return value


class _Publisher:
    """The thread that sends queued events to Redis, in the order they were queued."""

    def __init__(self, broker: RedisBroker, max_queued: int) -> None:
        self._broker = broker
        self._max_queued = max_queued
        self._queue: deque[Event] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._attempt = 0
        self._log = RateLimitedLog(logger)
        self.thread = threading.Thread(
            target=self._run, name="orderflow-redis-publisher", daemon=True
        )
        self.sent = 0
        self.dropped = 0
        self.notices = 0
        self.down_since: float | None = None
        self.error = ""
        self._dropped_at_loss = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def put(self, event: Event) -> None:
        with self._ready:
            if not self._closed and len(self._queue) < self._max_queued:
                self._queue.append(event)
                self._ready.notify()
                return
            self.dropped += 1
            closed = self._closed
        if closed:
            self._log.log(
                logging.INFO,
                "closed",
                "dropping publications because the Redis broker for %s is closed",
                self._broker.url,
            )
        else:
            self._log.log(
                logging.WARNING,
                "full",
                "dropping publications because %d are already queued for %s; "
                "subscribers read them from the event log",
                self._max_queued,
                self._broker.url,
            )

    def problem(self) -> str | None:
        down_since = self.down_since
        if down_since is None:
            return None
        return (
            f"publisher cannot reach {self._broker.url} for "
            f"{time.monotonic() - down_since:.1f} s: {self.error}"
        )

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            logger.critical(
                "Redis publisher thread for %s stopped on an unexpected error",
                self._broker.url,
                exc_info=exc,
            )
            raise

    def _loop(self) -> None:
        next_probe = time.monotonic()
        while True:
            batch, closing = self._take(next_probe)
            if closing and not batch:
                return

            if self.down_since is not None and (time.monotonic() < next_probe or closing):
                # Still down, and not yet time for the next attempt.
                self._drop(batch)
            else:
                try:
                    if batch:
                        self._send(batch)
                    else:
                        self._broker._client.ping()
                except _CONNECTION_ERRORS as exc:
                    self._drop(batch)
                    self._mark_down(exc)
                except Exception as exc:
                    self._drop(batch)
                    logger.error(
                        "Redis publisher for %s failed unexpectedly; continuing",
                        self._broker.url,
                        exc_info=exc,
                    )
                else:
                    self._mark_up()
                if self.down_since is None:
                    next_probe = time.monotonic() + self._broker.ping_interval
                else:
                    next_probe = time.monotonic() + backoff_delay(
                        self._attempt,
                        self._broker.min_reconnect_delay,
                        self._broker.max_reconnect_delay,
                    )
                    self._attempt += 1

            if closing:
                with self._ready:
                    if not self._queue:
                        return

    def _take(self, wake_at: float) -> tuple[list[Event], bool]:
        """Wait for queued events or until ``wake_at``; return a batch and whether closing."""
        with self._ready:
            while not self._queue and not self._closed:
                remaining = wake_at - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            return batch, self._closed

    def _send(self, batch: list[Event]) -> None:
        with self._broker._client.pipeline(transaction=False) as pipeline:
            count = 0
            for event in batch:
                message = self._broker._encode(event)
                if message is None:
                    self._count_dropped(1)
                    continue
                pipeline.publish(*message)
                count += 1
            if count:
                pipeline.execute()
        self.sent += count

    def _drop(self, batch: list[Event]) -> None:
        if not batch:
            return
        self._count_dropped(len(batch))
        self._log.log(
            logging.WARNING,
            "drop",
            "dropped %d publications because %s cannot be reached (%d dropped in total); "
            "subscribers read them from the event log",
            len(batch),
            self._broker.url,
            self.dropped,
        )

    def _count_dropped(self, count: int) -> None:
        # ``put`` counts under the same lock from other threads.
        with self._ready:
            self.dropped += count

    def _mark_down(self, exc: Exception) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        if self.down_since is not None:
            self._log.log(
                logging.WARNING,
                "retry",
                "Redis publisher still cannot reach %s: %s",
                self._broker.url,
                self.error,
            )
            return
        self.down_since = time.monotonic()
        self._dropped_at_loss = self.dropped
        logger.warning(
            "Redis publisher cannot reach %s, so it drops publications until Redis returns: %s",
            self._broker.url,
            self.error,
        )

    def _mark_up(self) -> None:
        self._attempt = 0
        down_since = self.down_since
        if down_since is None:
            return
        self.down_since = None
        self._log.reset("retry")
        logger.info(
            "Redis publisher reaches %s again after %.1f s; %d publications were dropped meanwhile",
            self._broker.url,
            time.monotonic() - down_since,
            self.dropped - self._dropped_at_loss,
        )


@dataclass(slots=True)
class _PubSubState:
    """The subscriptions of one PubSub connection, and those Redis has not confirmed yet."""

    version: int = -1
    channels: frozenset[str] = frozenset()
    patterns: frozenset[str] = frozenset()
    pending: set[str] = field(default_factory=set)


class _Listener:
    """One run of the listener thread, from a first subscription until the last one closes."""

    def __init__(self, broker: RedisBroker) -> None:
        self._broker = broker
        self.stop = threading.Event()
        self.changed = threading.Event()
        self.confirmed_version = -1
        self.down_since: float | None = None
        self.error = ""
        self._connected = False
        self._attempt = 0
        self._log = RateLimitedLog(logger)
        self.thread = threading.Thread(
            target=self._run, name="orderflow-redis-listener", daemon=True
        )

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def problem(self) -> str | None:
        down_since = self.down_since
        if down_since is None:
            return None
        return (
            f"listener cannot reach {self._broker.url} for "
            f"{time.monotonic() - down_since:.1f} s: {self.error}"
        )

    def _run(self) -> None:
        logger.info("Redis listener starting for %s", self._broker.url)
        try:
            self._supervise()
        except BaseException as exc:
            logger.critical(
                "Redis listener thread for %s stopped on an unexpected error",
                self._broker.url,
                exc_info=exc,
            )
            raise
        logger.info("Redis listener for %s stopped", self._broker.url)

    def _supervise(self) -> None:
        """Listen until stopped; reconnect with backoff after every failure."""
        while not self.stop.is_set():
            pubsub = self._broker._client.pubsub()
            try:
                self._listen(pubsub)
            except _CONNECTION_ERRORS as exc:
                if not self.stop.is_set():
                    self._mark_down(exc)
            except Exception as exc:
                if not self.stop.is_set():
                    logger.error(
                        "Redis listener for %s failed unexpectedly; restarting it",
                        self._broker.url,
                        exc_info=exc,
                    )
                    self._mark_down(exc)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

            if self.stop.is_set():
                break
            # NOTE: what is published from the loss until Redis confirms the
            # resubscription never arrives here; the feed reads it from the log.
            delay = backoff_delay(
                self._attempt, self._broker.min_reconnect_delay, self._broker.max_reconnect_delay
            )
            self._attempt += 1
            self.stop.wait(delay)

    def _listen(self, pubsub: PubSub) -> None:
        """Subscribe on a fresh connection and deliver messages until stopped or failed."""
        state = _PubSubState()
        self.changed.set()
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while not self.stop.is_set():
            if self.changed.is_set():
                self.changed.clear()
                self._reconcile(pubsub, state)

            message = pubsub.get_message(timeout=0.1)
            now = time.monotonic()
            if message is None:
                if not (state.channels or state.patterns):
                    last_heard = now
                elif ping_sent is None and now - last_heard >= self._broker.ping_interval:
                    pubsub.ping()
                    ping_sent = now
                elif ping_sent is not None and now - ping_sent >= self._broker.ping_interval:
                    raise redis.exceptions.TimeoutError(
                        f"no reply to PING within {self._broker.ping_interval} s"
                    )
                continue

            last_heard = now
            ping_sent = None
            kind = message["type"]
            if kind in ("message", "pmessage"):
                self._broker._deliver(self, kind == "pmessage", message["channel"], message["data"])
            elif kind in ("subscribe", "psubscribe"):
                state.pending.discard(message["channel"].decode())
                if not state.pending:
                    self._confirmed(state)

    def _reconcile(self, pubsub: PubSub, state: _PubSubState) -> None:
        """Bring the connection's subscriptions in line with the open subscriptions."""
        version, channels, patterns = self._broker._needed_channels()
        added_channels = channels - state.channels
        added_patterns = patterns - state.patterns
        if added_channels:
            pubsub.subscribe(*added_channels)
        if added_patterns:
            pubsub.psubscribe(*added_patterns)
        if state.channels - channels:
            pubsub.unsubscribe(*(state.channels - channels))  # type: ignore[no-untyped-call]
        if state.patterns - patterns:
            pubsub.punsubscribe(*(state.patterns - patterns))  # type: ignore[no-untyped-call]
        state.pending.update(added_channels, added_patterns)
        state.version, state.channels, state.patterns = version, channels, patterns
        if not state.pending:
            self._confirmed(state)

    def _confirmed(self, state: _PubSubState) -> None:
        """Record that Redis confirmed every subscription; log the return after a loss."""
        self._broker._confirm(self, state.version)
        self._connected = True
        self._attempt = 0
        down_since = self.down_since
        if down_since is None:
            return
        self.down_since = None
        self._broker.reconnects += 1
        self._log.reset("retry")
        logger.info(
            "Redis listener reconnected to %s after %.1f s and resubscribed to %d channels "
            "and patterns",
            self._broker.url,
            time.monotonic() - down_since,
            len(state.channels) + len(state.patterns),
        )

    def _mark_down(self, exc: Exception) -> None:
        self._broker._confirm(self, -1)
        self.error = f"{type(exc).__name__}: {exc}"
        if self.down_since is not None:
            self._log.log(
                logging.WARNING,
                "retry",
                "Redis listener still cannot reach %s: %s",
                self._broker.url,
                self.error,
            )
            return
        self.down_since = time.monotonic()
        if self._connected:
            logger.warning(
                "Redis listener lost its connection to %s, so publications are lost until it "
                "reconnects: %s",
                self._broker.url,
                self.error,
            )
        else:
            logger.warning(
                "Redis listener cannot connect to %s and retries with backoff: %s",
                self._broker.url,
                self.error,
            )
        self._connected = False
