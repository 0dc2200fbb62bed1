"""Orders, items, events and snapshots, and their JSON form.

The JSON form is the wire contract: field names and types here are what the
HTTP API and the WebSocket feed send. Timestamps are RFC 3339 strings in UTC
with microseconds and a ``Z`` suffix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Event",
    "EventPage",
    "Item",
    "LogPosition",
    "Order",
    "Snapshot",
    "format_time",
    "parse_time",
]

EVENT_CREATED = "order.created"
EVENT_TRANSITIONED = "order.transitioned"
EVENT_UPDATED = "order.updated"
EVENT_KINDS = (EVENT_CREATED, EVENT_TRANSITIONED, EVENT_UPDATED)


def format_time(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 in UTC, e.g. ``2026-01-31T12:00:00.000000Z``."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware; pass a datetime with tzinfo")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    if moment.year < 1000:
        # On Linux strftime writes years below 1000 without leading zeros and
        # isoformat would pad them, so such years keep the old spelling.
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat takes about two thirds of strftime's time (CPython 3.11). For
    # UTC it ends in "+00:00", which becomes "Z".
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware datetime in UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no UTC offset")
    return moment.astimezone(UTC)


def dumps(value: Any) -> str:
    """Encode compact JSON that keeps non-ASCII text as UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Item:
    """One line of an order: what to make, how many, and where."""

    name: str
    quantity: int
    station: str | None = None
    notes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "quantity": self.quantity}
        if self.station is not None:
            data["station"] = self.station
        if self.notes is not None:
            data["notes"] = self.notes
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Item:
        """Build an item from trusted data, such as a row this library wrote."""
        return cls(data["name"], data["quantity"], data.get("station"), data.get("notes"))


@dataclass(frozen=True, slots=True)
class Order:
    """An order at one version. Orders are immutable; a change makes a new one."""

    id: str
    location: str
    state: str
    version: int
    items: tuple[Item, ...]
    meta: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    # The order's JSON text once encoded, because one order goes into its
    # event, the feed's snapshot and the API responses. Not an init field, so
    # dataclasses.replace() never carries it over to a changed order.
    _json: str | None = field(default=None, init=False, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "location": self.location,
            "state": self.state,
            "version": self.version,
            "items": [item.to_dict() for item in self.items],
            "meta": dict(self.meta),
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
        }

    def to_json(self) -> str:
        """Return the order's JSON text, encoding it once."""
        text = self._json
        if text is None:
            text = dumps(self.to_dict())
            # The order is frozen; the cache is the one field set after __init__.
            object.__setattr__(self, "_json", text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Order:
        """Build an order from trusted data, such as an event this library wrote."""
        return cls(
            id=data["id"],
            location=data["location"],
            state=data["state"],
            version=data["version"],
            items=tuple(Item.from_dict(item) for item in data["items"]),
            meta=data["meta"],
            created_at=parse_time(data["created_at"]),
            updated_at=parse_time(data["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change of one order, numbered by ``seq`` in its location.

    ``from_state`` is None for ``order.created``; for ``order.updated`` it
    equals ``to_state``. ``order`` is the whole order after the change.
    """

    seq: int
    order_id: str
    kind: str
    from_state: str | None
    to_state: str
    version: int
    at: datetime
    actor: str | None
    reason: str | None
    order: Order
    # Encodings of this event (its JSON, a WebSocket frame), cached because
    # one event goes to the database, the broker and every screen.
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def location(self) -> str:
        return self.order.location

    def _fields(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "order_id": self.order_id,
            "kind": self.kind,
            "from": self.from_state,
            "to": self.to_state,
            "version": self.version,
            "at": format_time(self.at),
            "actor": self.actor,
            "reason": self.reason,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self._fields(), "order": self.order.to_dict()}

    def to_json(self) -> str:
        """Return the event's JSON text, encoding it once.

        The text equals ``dumps(self.to_dict())``. It is built around the
        order's own cached JSON, which the feed reuses for its snapshot.
        """
        text: str | None = self._cache.get("json")
        if text is None:
            fields = dumps(self._fields())
            text = self._cache["json"] = f'{fields[:-1]},"order":{self.order.to_json()}}}'
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            seq=data["seq"],
            order_id=data["order_id"],
            kind=data["kind"],
            from_state=data["from"],
            to_state=data["to"],
            version=data["version"],
            at=parse_time(data["at"]),
            actor=data["actor"],
            reason=data["reason"],
            order=Order.from_dict(data["order"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Event:
        """Decode an event and keep ``text`` as its cached JSON."""
        event = cls.from_dict(json.loads(text))
        event._cache["json"] = text
        return event


@dataclass(frozen=True, slots=True)
class LogPosition:
    """The position of a location's event log.

    ``head`` is the seq of the newest event (0 for an empty log) and
    ``oldest`` the seq after which events are retained: ``events_since(n)``
    works for every ``n >= oldest``.
    """

    location: str
    epoch: str
    head: int
    oldest: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The active orders of a location, consistent with event ``head``."""

    location: str
    epoch: str
    head: int
    digest: str
    orders: tuple[Order, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "epoch": self.epoch,
            "head": self.head,
            "digest": self.digest,
            "orders": [order.to_dict() for order in self.orders],
        }


@dataclass(frozen=True, slots=True)
class EventPage:
    """Events after a cursor, ascending, with the log's epoch and head at read time."""

    location: str
    epoch: str
    head: int
    events: tuple[Event, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "head": self.head,
            "events": [json.loads(event.to_json()) for event in self.events],
        }
