"""The blocking engine, for code without an event loop (a Django or Flask view).

``Engine`` validates requests, runs each change through the transition core
inside one storage transaction, and publishes the committed events after the
outermost commit. ``orderflow.aio.AsyncEngine`` wraps it for async code.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from . import core
from ._logging import RateLimitedLog
from .broker import DEFAULT_BROKER_URL, Broker, BrokerHealth, MemoryBroker, broker_from_url
from .errors import (
    EpochMismatch,
    IdempotencyKeyReused,
    InvalidRequest,
    OrderNotFound,
    StorageError,
    TransactionAborted,
)
from .lifecycle import DEFAULT_LIFECYCLE, Lifecycle
from .models import Event, EventPage, Item, LogPosition, Order, Snapshot
from .storage import DEFAULT_DATABASE_URL, Change, Storage, WriteTransaction, storage_from_url

__all__ = ["Engine", "Health", "Transaction", "new_order_id"]

logger = logging.getLogger(__name__)

MAX_PAGE = 10_000
DEFAULT_PAGE = 1_000

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

Listener = Callable[[Sequence[Event]], None]


def new_order_id() -> str:
    """Return a 26-character id that sorts by creation time (the ULID layout)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _utc_now() -> datetime:
    return datetime.now(UTC)


def load_lifecycle(lifecycle: Lifecycle | Mapping[str, Any] | str | Path | None) -> Lifecycle:
    """Accept a lifecycle object, its mapping form, or a JSON/TOML file path."""
    if lifecycle is None:
        return DEFAULT_LIFECYCLE
    if isinstance(lifecycle, Lifecycle):
        return lifecycle
    if isinstance(lifecycle, Mapping):
        return Lifecycle.from_mapping(lifecycle)
    return Lifecycle.from_file(lifecycle)


@dataclass(frozen=True, slots=True)
class Health:
    """The engine's view of its storage and broker."""

    storage_ok: bool
    storage_detail: str
    broker: BrokerHealth
    heads: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.storage_ok:
            return "down"
        return "ok" if self.broker.ok else "degraded"


class Transaction:
    """Changes that commit together, made inside ``Engine.transaction()``.

    Every method validates its input and raises before it writes, so a
    rejected change leaves the transaction usable. A failure of the database
    itself spoils the transaction: later calls raise ``TransactionAborted``
    and the block rolls back.
    """

    def __init__(self, engine: Engine, storage_tx: WriteTransaction) -> None:
        self._engine = engine
        self._tx = storage_tx
        self._events: list[Event] = []
        self._failure: BaseException | None = None

    @property
    def events(self) -> tuple[Event, ...]:
        """The events written so far, published once the outermost block commits."""
        return tuple(self._events)

    def create(
        self,
        items: Iterable[Mapping[str, Any] | Item],
        *,
        id: str | None = None,
        location: str = "main",
        meta: Mapping[str, Any] | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """Create an order in the lifecycle's initial state (version 1)."""
        request = core.parse_new_order(
            {"items": items, "id": id, "location": location, "meta": meta, "actor": actor}
        )
        return self.apply_create(request, idempotency_key)

    def apply_create(self, request: core.NewOrder, idempotency_key: str | None = None) -> Order:
        """Create an order from an already validated request."""
        key = _key(idempotency_key)
        self._check_usable()
        locked = self._tx.lock_location(request.location, key)
        if locked.stored is not None:
            return self._replay(locked.stored.fingerprint, locked.stored.order, request, key)
        engine = self._engine
        order, draft = core.create_order(
            request,
            engine.lifecycle,
            order_id=request.id or new_order_id(),
            now=engine.clock(),
        )
        event = draft.numbered(locked.position.head + 1)
        self._save(Change(order, None, event, True, True, key, _fingerprint(request, key)))
        return order

    def transition(
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
        """Move an order to state ``to``.

        ``expected_version``, when given, must be the order's current version.
        ``roles``, when given, are checked against the roles the lifecycle
        requires for this move; None means a trusted caller.
        """
        request = core.parse_transition(
            order_id,
            {"to": to, "expected_version": expected_version, "reason": reason, "actor": actor},
            self._engine.lifecycle,
        )
        if roles is not None:
            request = core.TransitionRequest(
                request.order_id,
                request.to,
                request.expected_version,
                request.reason,
                request.actor,
                frozenset(roles),
            )
        return self.apply_transition(request, idempotency_key)

    def apply_transition(
        self, request: core.TransitionRequest, idempotency_key: str | None = None
    ) -> Order:
        """Move an order as an already validated request specifies."""
        key = _key(idempotency_key)
        self._check_usable()
        locked = self._tx.lock_order(request.order_id, key)
        if locked is None:
            raise OrderNotFound(request.order_id)
        if locked.stored is not None:
            return self._replay(locked.stored.fingerprint, locked.stored.order, request, key)
        engine = self._engine
        order, draft = core.transition_order(
            locked.order, request, engine.lifecycle, now=engine.clock()
        )
        event = draft.numbered(locked.position.head + 1)
        active = engine.lifecycle.is_active(order.state)
        change = Change(
            order, locked.order.version, event, active, False, key, _fingerprint(request, key)
        )
        self._save(change)
        return order

    def update(
        self,
        order_id: str,
        *,
        items: Iterable[Mapping[str, Any] | Item] | None = None,
        meta: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """Replace an order's items, meta or both, in a state the lifecycle lists as editable."""
        request = core.parse_update(
            order_id,
            {"items": items, "meta": meta, "expected_version": expected_version, "actor": actor},
        )
        return self.apply_update(request, idempotency_key)

    def apply_update(
        self, request: core.UpdateRequest, idempotency_key: str | None = None
    ) -> Order:
        key = _key(idempotency_key)
        self._check_usable()
        locked = self._tx.lock_order(request.order_id, key)
        if locked is None:
            raise OrderNotFound(request.order_id)
        if locked.stored is not None:
            return self._replay(locked.stored.fingerprint, locked.stored.order, request, key)
        engine = self._engine
        order, draft = core.update_order(
            locked.order, request, engine.lifecycle, now=engine.clock()
        )
        event = draft.numbered(locked.position.head + 1)
        active = engine.lifecycle.is_active(order.state)
        self._save(
            Change(
                order, locked.order.version, event, active, True, key, _fingerprint(request, key)
            )
        )
        return order

    def _replay(
        self,
        stored_fingerprint: str,
        stored_order: Order,
        request: core.NewOrder | core.TransitionRequest | core.UpdateRequest,
        key: str | None,
    ) -> Order:
        if stored_fingerprint != request.fingerprint():
            raise IdempotencyKeyReused(key or "", stored_order.location)
        return stored_order

    def _save(self, change: Change) -> None:
        try:
            self._tx.save(change)
        except BaseException as exc:
            self._failure = exc
            raise
        self._events.append(change.event)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise TransactionAborted(
                f"an earlier write in this transaction failed ({self._failure!r}); "
                "leave the transaction block so it rolls back, then retry"
            ) from self._failure


def _key(idempotency_key: str | None) -> str | None:
    return None if idempotency_key is None else core.validate_idempotency_key(idempotency_key)


def _fingerprint(
    request: core.NewOrder | core.TransitionRequest | core.UpdateRequest, key: str | None
) -> str | None:
    return None if key is None else request.fingerprint()


class Engine:
    """The order engine for blocking code.

    Open it from URLs with ``Engine.open()`` or give it adapter objects. It is
    thread-safe: share one engine between the threads of a web server.
    """

    def __init__(
        self,
        storage: Storage,
        broker: Broker | None = None,
        *,
        lifecycle: Lifecycle | Mapping[str, Any] | str | Path | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.storage = storage
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.lifecycle = load_lifecycle(lifecycle)
        self.clock: Callable[[], datetime] = clock or _utc_now
        self._local = threading.local()
        self._listeners: tuple[Listener, ...] = ()
        self._listeners_lock = threading.Lock()
        self._publish_errors = RateLimitedLog(logger)
        self._owned: list[Callable[[], None]] = []
        self._closed = False
        # The highest seq this process committed per location, so a reader in
        # this process can wait until its feed has caught up with its writes.
        self.committed_heads: dict[str, int] = {}

    @classmethod
    def open(
        cls,
        database: str | Storage = DEFAULT_DATABASE_URL,
        broker: str | Broker = DEFAULT_BROKER_URL,
        *,
        lifecycle: Lifecycle | Mapping[str, Any] | str | Path | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> Engine:
        """Open storage and broker from URLs (or objects) and return a ready engine.

        The schema is created or migrated on open. ``close()`` closes
        whatever this call opened.
        """
        resolved_lifecycle = load_lifecycle(lifecycle)
        storage = storage_from_url(database) if isinstance(database, str) else database
        storage.open()
        try:
            resolved_broker = broker_from_url(broker) if isinstance(broker, str) else broker
            resolved_broker.start()
        except BaseException:
            storage.close()
            raise
        engine = cls(storage, resolved_broker, lifecycle=resolved_lifecycle, clock=clock)
        engine._owned = [resolved_broker.close, storage.close]
        return engine

    def close(self) -> None:
        """Close the storage and broker that ``open()`` opened; idempotent."""
        if self._closed:
            return
        self._closed = True
        for close in self._owned:
            try:
                close()
            except Exception:
                logger.exception("closing %r failed", close)

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Writes.

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Group changes into one commit; events are published after it.

        A nested ``transaction()`` on the same thread joins the outer one, so
        its events go out only when the outermost block commits, and not at
        all if it rolls back.
        """
        current: Transaction | None = getattr(self._local, "transaction", None)
        if current is not None:
            yield current
            return
        holder: list[Transaction] = []
        with self.storage.write(on_commit=lambda: self._announce(holder[0].events)) as storage_tx:
            transaction = Transaction(self, storage_tx)
            holder.append(transaction)
            self._local.transaction = transaction
            try:
                yield transaction
            finally:
                self._local.transaction = None
            transaction._check_usable()

    def create(
        self,
        items: Iterable[Mapping[str, Any] | Item],
        *,
        id: str | None = None,
        location: str = "main",
        meta: Mapping[str, Any] | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """Create an order in the lifecycle's initial state (version 1).

        ``items`` are mappings with ``name``, ``quantity`` and optional
        ``station`` and ``notes``, or ``Item`` objects. Without ``id`` a
        time-ordered id is generated. Raises ``InvalidRequest`` naming the
        bad field, or ``IdConflict`` when ``id`` is taken.
        """
        with self.transaction() as tx:
            return tx.create(
                items,
                id=id,
                location=location,
                meta=meta,
                actor=actor,
                idempotency_key=idempotency_key,
            )

    def transition(
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
        """Move an order to state ``to`` and return it at its new version.

        Raises ``OrderNotFound``, ``VersionConflict``, ``InvalidTransition``
        (with the allowed targets), ``ReasonRequired`` or ``Forbidden``; the
        order is unchanged when any of them is raised.
        """
        with self.transaction() as tx:
            return tx.transition(
                order_id,
                to,
                expected_version=expected_version,
                reason=reason,
                actor=actor,
                roles=roles,
                idempotency_key=idempotency_key,
            )

    def update(
        self,
        order_id: str,
        *,
        items: Iterable[Mapping[str, Any] | Item] | None = None,
        meta: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> Order:
        """Replace an order's items, meta or both (an ``order.updated`` event)."""
        with self.transaction() as tx:
            return tx.update(
                order_id,
                items=items,
                meta=meta,
                expected_version=expected_version,
                actor=actor,
                idempotency_key=idempotency_key,
            )

    # Reads.

    def get(self, order_id: str) -> Order:
        """Return the current order; raise ``OrderNotFound`` if there is none."""
        order = self.storage.get_order(core.validate_order_id(order_id, "order_id"))
        if order is None:
            raise OrderNotFound(order_id)
        return order

    def history(self, order_id: str) -> list[Event]:
        """Return the retained events of one order, oldest first."""
        events = self.storage.order_history(core.validate_order_id(order_id, "order_id"))
        if events is None:
            raise OrderNotFound(order_id)
        return events

    def snapshot(self, location: str = "main") -> Snapshot:
        """Return the active orders of ``location`` with the head they are consistent with."""
        return self.storage.snapshot(core.validate_location(location))

    def position(self, location: str = "main") -> LogPosition:
        return self.storage.position(core.validate_location(location))

    def events_since(
        self,
        since: int,
        *,
        location: str = "main",
        epoch: str | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> EventPage:
        """Return events with seq > ``since``, ascending, at most ``limit`` of them.

        Raises ``EpochMismatch`` when ``epoch`` is given and is not the log's
        current epoch, and ``HistoryTruncated`` when ``since`` is below the
        retained range. A ``since`` at or above the head returns no events.
        """
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise InvalidRequest("since", f"must be a whole number of at least 0, not {since!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(
                "limit", f"must be a whole number from 1 to {MAX_PAGE}, not {limit!r}"
            )
        location = core.validate_location(location)
        page = self.storage.events_since(location, since, limit)
        if epoch is not None and epoch != page.epoch:
            raise EpochMismatch(location, since, epoch, page.epoch)
        return page

    def health(self) -> Health:
        """Check the storage with a trivial query and report the broker's state."""
        broker = self.broker.health()
        try:
            heads = {position.location: position.head for position in self.storage.locations()}
        except StorageError as exc:
            return Health(False, str(exc), broker)
        return Health(True, "ok", broker, heads)

    # Maintenance.

    def prune(self, location: str = "main", *, older_than: timedelta) -> int:
        """Delete events older than ``older_than``, keeping all events of active orders."""
        return self.storage.prune(core.validate_location(location), self.clock() - older_than)

    def new_epoch(self, location: str = "main") -> str:
        """Start a new epoch for ``location``, which sends every screen a snapshot.

        Run it after restoring the database from a backup, so that no screen
        resumes from a position the restored log never had.
        """
        return self.storage.new_epoch(core.validate_location(location))

    # Delivery.

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(events)`` after every commit in this process.

        It runs in the committing thread, so it must be quick and must not
        raise. Returns a function that removes the listener.
        """
        with self._listeners_lock:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._listeners_lock:
                self._listeners = tuple(item for item in self._listeners if item is not listener)

        return remove

    def _announce(self, events: Sequence[Event]) -> None:
        """Publish committed events; a failure is logged and never raised."""
        if not events:
            return
        for event in events:
            location = event.order.location
            if event.seq > self.committed_heads.get(location, 0):
                self.committed_heads[location] = event.seq
        for event in events:
            try:
                self.broker.publish(event)
            except Exception as exc:
                self._publish_errors.log(
                    logging.WARNING,
                    "publish",
                    "publishing event %d of location %r to %s failed; readers will "
                    "repair it from the event log: %r",
                    event.seq,
                    event.location,
                    self.broker.url,
                    exc,
                )
        for listener in self._listeners:
            try:
                listener(events)
            except Exception as exc:
                self._publish_errors.log(
                    logging.ERROR, "listener", "listener %r raised", listener, exc_info=exc
                )
