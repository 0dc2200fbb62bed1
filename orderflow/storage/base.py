"""The storage interface that every database adapter implements.

The engine drives every write through three calls inside one
``Storage.write()`` block: a ``lock_*`` call that serialises writers of one
location and reads what the change depends on, the pure transition core, and
``save`` with the result. Adapters keep those calls coarse so that a
networked database can send each one in a single round trip.

Adapters translate driver exceptions into ``orderflow.errors`` at this
boundary; nothing above it imports a driver.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..models import Event, EventPage, LogPosition, Order, Snapshot

__all__ = [
    "Change",
    "LockedLocation",
    "LockedOrder",
    "Storage",
    "StoredResult",
    "WriteTransaction",
]


@dataclass(frozen=True, slots=True)
class StoredResult:
    """The first result of a request made with an idempotency key."""

    fingerprint: str
    order: Order


@dataclass(frozen=True, slots=True)
class LockedLocation:
    """A location's log position, read under its write lock.

    ``stored`` is the earlier result of the idempotency key that the lock
    call was given, if that key was seen before in this location.
    """

    position: LogPosition
    stored: StoredResult | None = None


@dataclass(frozen=True, slots=True)
class LockedOrder:
    """An order read under the write lock of its location."""

    position: LogPosition
    order: Order
    stored: StoredResult | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One order change to commit: the new order row, its event and its key.

    ``previous_version`` is None for a new order; otherwise the row is
    updated only if it is still at that version. ``active`` is whether the
    order belongs in snapshots, that is, whether its state is not terminal.
    """

    order: Order
    previous_version: int | None
    event: Event
    active: bool
    items_changed: bool = True
    idempotency_key: str | None = None
    fingerprint: str | None = None


class WriteTransaction(Protocol):
    """One open write transaction. Changes become visible on commit only."""

    def lock_location(self, location: str, idempotency_key: str | None = None) -> LockedLocation:
        """Lock ``location`` for writing, creating its log and epoch if it is new."""
        ...

    def lock_order(self, order_id: str, idempotency_key: str | None = None) -> LockedOrder | None:
        """Lock the location of ``order_id`` and read the order; None if it does not exist."""
        ...

    def save(self, change: Change) -> None:
        """Write the order row, append its event as the new head, and store the key.

        The event's seq must be the location's head + 1. Raises ``IdConflict``
        when a new order's id is taken. An adapter that sends its writes
        together with COMMIT (PostgreSQL) may raise it later instead, from the
        next call in the transaction or when the ``write()`` block commits.
        Nothing is committed either way.
        """
        ...


@runtime_checkable
class Storage(Protocol):
    """A database that stores orders, event logs and idempotency keys.

    Methods are blocking and thread-safe; the async engine calls them from
    worker threads so they never block an event loop.
    """

    @property
    def url(self) -> str:
        """The database URL with any password removed, for logs."""
        ...

    def open(self) -> None:
        """Connect, then create or migrate the schema."""
        ...

    def close(self) -> None: ...

    def write(
        self, on_commit: Callable[[], None] | None = None
    ) -> AbstractContextManager[WriteTransaction]:
        """Open a write transaction that commits when the block exits normally.

        ``on_commit`` runs right after a successful COMMIT. Adapters that
        serialise writers in-process (SQLite) call it before letting the next
        writer in, so events leave a process in seq order. Others (PostgreSQL)
        may call it out of seq order across threads. Feeds repair that by
        reading the missing events from the log.
        """
        ...

    def get_order(self, order_id: str) -> Order | None: ...

    def order_history(self, order_id: str) -> list[Event] | None:
        """Return the retained events of one order, ascending; None if no such order."""
        ...

    def position(self, location: str) -> LogPosition:
        """Return the location's log position, creating the log if it is new."""
        ...

    def snapshot(self, location: str) -> Snapshot:
        """Read the active orders and the head in one read transaction."""
        ...

    def events_since(self, location: str, since: int, limit: int) -> EventPage:
        """Return up to ``limit`` events with seq > ``since``, ascending.

        Raises ``HistoryTruncated`` when ``since`` is below the retained range.
        """
        ...

    def locations(self) -> list[LogPosition]: ...

    def ping(self) -> None:
        """Raise a ``StorageError`` unless the database returns the result of a trivial query."""
        ...

    def prune(self, location: str, before: datetime) -> int:
        """Delete events older than ``before`` and return how many went.

        Events of orders that are still active are kept, so the retained
        range never starts after the creation of an active order.
        """
        ...

    def new_epoch(self, location: str) -> str:
        """Give the location's log a new random epoch and return it."""
        ...
