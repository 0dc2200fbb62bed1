"""The transition core: requests in, new orders and their events out.

Nothing here touches a database, a broker, a clock or a logger. Storage and
the engine wrap these functions: they read the current order, call one of
``create_order``, ``transition_order`` or ``update_order`` with the time of
the change, and commit what comes back. A rejected request raises a typed
error before anything is written, so the order is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import (
    Forbidden,
    InvalidRequest,
    InvalidTransition,
    OrderNotEditable,
    ReasonRequired,
    VersionConflict,
)
from .lifecycle import Lifecycle
from .models import EVENT_CREATED, EVENT_TRANSITIONED, EVENT_UPDATED, Event, Item, Order

__all__ = [
    "EventDraft",
    "NewOrder",
    "TransitionRequest",
    "UpdateRequest",
    "create_order",
    "parse_new_order",
    "parse_transition",
    "parse_update",
    "transition_order",
    "update_order",
    "validate_idempotency_key",
    "validate_location",
    "validate_order_id",
]

MAX_ITEMS = 500
MAX_QUANTITY = 10_000
MAX_NAME_LENGTH = 200
MAX_STATION_LENGTH = 64
MAX_NOTES_LENGTH = 1000
MAX_ACTOR_LENGTH = 128
MAX_REASON_LENGTH = 1000
MAX_META_BYTES = 16 * 1024
MAX_IDEMPOTENCY_KEY_LENGTH = 200

_ORDER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
_LOCATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}\Z")
_ITEM_KEYS = frozenset({"name", "quantity", "station", "notes"})


# Requests.


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A validated request to create an order."""

    items: tuple[Item, ...]
    id: str | None = None
    location: str = "main"
    meta: Mapping[str, Any] = field(default_factory=dict)
    actor: str | None = None

    def fingerprint(self) -> str:
        return _fingerprint(
            {
                "op": "create",
                "id": self.id,
                "location": self.location,
                "items": [item.to_dict() for item in self.items],
                "meta": self.meta,
                "actor": self.actor,
            }
        )


@dataclass(frozen=True, slots=True)
class TransitionRequest:
    """A validated request to move an order to state ``to``.

    ``roles`` is None for a trusted caller; otherwise the roles the caller
    holds, checked against the roles the lifecycle requires.
    """

    order_id: str
    to: str
    expected_version: int | None = None
    reason: str | None = None
    actor: str | None = None
    roles: frozenset[str] | None = None

    def fingerprint(self) -> str:
        return _fingerprint(
            {
                "op": "transition",
                "order_id": self.order_id,
                "to": self.to,
                "expected_version": self.expected_version,
                "reason": self.reason,
                "actor": self.actor,
            }
        )


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    """A validated request to replace an order's items, meta, or both."""

    order_id: str
    items: tuple[Item, ...] | None = None
    meta: Mapping[str, Any] | None = None
    expected_version: int | None = None
    actor: str | None = None

    def fingerprint(self) -> str:
        return _fingerprint(
            {
                "op": "update",
                "order_id": self.order_id,
                "items": None if self.items is None else [i.to_dict() for i in self.items],
                "meta": self.meta,
                "expected_version": self.expected_version,
                "actor": self.actor,
            }
        )


def _fingerprint(data: Mapping[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event that has no seq yet; storage numbers it inside the transaction."""

    kind: str
    from_state: str | None
    actor: str | None
    reason: str | None
    order: Order

    def numbered(self, seq: int) -> Event:
        order = self.order
        return Event(
            seq=seq,
            order_id=order.id,
            kind=self.kind,
            from_state=self.from_state,
            to_state=order.state,
            version=order.version,
            at=order.updated_at,
            actor=self.actor,
            reason=self.reason,
            order=order,
        )


# Transitions.


def create_order(
    request: NewOrder, lifecycle: Lifecycle, *, order_id: str, now: datetime
) -> tuple[Order, EventDraft]:
    """Return a new order in the lifecycle's initial state, at version 1."""
    order = Order(
        id=order_id,
        location=request.location,
        state=lifecycle.initial,
        version=1,
        items=request.items,
        meta=request.meta,
        created_at=now,
        updated_at=now,
    )
    return order, EventDraft(EVENT_CREATED, None, request.actor, None, order)


def transition_order(
    order: Order, request: TransitionRequest, lifecycle: Lifecycle, *, now: datetime
) -> tuple[Order, EventDraft]:
    """Move ``order`` to ``request.to``, or raise without changing anything.

    The checks run in this order: expected version, allowed transition,
    required reason, roles. A stale version is reported first because a
    client with an old copy may be asking for a move that was valid then.
    """
    _check_version(order, request.expected_version)
    rule = lifecycle.rule(order.state, request.to)
    if rule is None:
        raise InvalidTransition(
            order.id, order.state, request.to, lifecycle.allowed_targets(order.state)
        )
    if rule.reason_required and not (request.reason and request.reason.strip()):
        raise ReasonRequired(order.id, request.to)
    if rule.roles and request.roles is not None and not rule.roles & request.roles:
        raise Forbidden(
            f"moving order {order.id!r} from {order.state} to {request.to} requires one "
            f"of the roles {', '.join(sorted(rule.roles))}",
            rule.roles,
        )
    new_order = Order(
        id=order.id,
        location=order.location,
        state=request.to,
        version=order.version + 1,
        items=order.items,
        meta=order.meta,
        created_at=order.created_at,
        updated_at=_not_before(now, order.updated_at),
    )
    draft = EventDraft(EVENT_TRANSITIONED, order.state, request.actor, request.reason, new_order)
    return new_order, draft


def update_order(
    order: Order, request: UpdateRequest, lifecycle: Lifecycle, *, now: datetime
) -> tuple[Order, EventDraft]:
    """Replace the items or meta of ``order``, or raise without changing anything."""
    _check_version(order, request.expected_version)
    if order.state not in lifecycle.editable:
        raise OrderNotEditable(order.id, order.state, lifecycle.editable)
    new_order = Order(
        id=order.id,
        location=order.location,
        state=order.state,
        version=order.version + 1,
        items=order.items if request.items is None else request.items,
        meta=order.meta if request.meta is None else request.meta,
        created_at=order.created_at,
        updated_at=_not_before(now, order.updated_at),
    )
    draft = EventDraft(EVENT_UPDATED, order.state, request.actor, None, new_order)
    return new_order, draft


def _check_version(order: Order, expected: int | None) -> None:
    if expected is not None and expected != order.version:
        raise VersionConflict(order.id, expected, order.version)


def _not_before(now: datetime, previous: datetime) -> datetime:
    # A clock step backwards must not make updated_at go back in time.
    return previous if now < previous else now


# Validation of untrusted input. Every error names the field and describes
# a valid value.


def validate_order_id(value: Any, field_name: str = "id") -> str:
    if not isinstance(value, str) or not _ORDER_ID.match(value):
        raise InvalidRequest(
            field_name,
            f"invalid order id {_show(value)}; use 1 to 64 letters, digits, '.', '_', ':' "
            "or '-', starting with a letter or digit",
        )
    return value


def validate_location(value: Any, field_name: str = "location") -> str:
    if not isinstance(value, str) or not _LOCATION.match(value):
        raise InvalidRequest(
            field_name,
            f"invalid location {_show(value)}; use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return value


def validate_idempotency_key(value: Any) -> str:
    if not isinstance(value, str) or not _IDEMPOTENCY_KEY.match(value):
        raise InvalidRequest(
            "Idempotency-Key",
            f"invalid idempotency key {_show(value)}; use 1 to "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters, such as a UUID",
        )
    return value


def parse_items(value: Any, field_name: str = "items") -> tuple[Item, ...]:
    """Validate a list of items given as mappings or ``Item`` objects."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidRequest(
            field_name, 'must be a list of items such as {"name": "Margherita", "quantity": 1}'
        )
    raw = list(value)
    if not raw:
        raise InvalidRequest(field_name, "must contain at least one item")
    if len(raw) > MAX_ITEMS:
        raise InvalidRequest(field_name, f"has {len(raw)} items; the maximum is {MAX_ITEMS}")
    return tuple(_parse_item(entry, f"{field_name}.{index}") for index, entry in enumerate(raw))


def _parse_item(entry: Any, where: str) -> Item:
    if isinstance(entry, Item):
        entry = entry.to_dict()
    if not isinstance(entry, Mapping):
        raise InvalidRequest(where, "must be an object with 'name' and 'quantity'")
    unknown = set(entry) - _ITEM_KEYS
    if unknown:
        raise InvalidRequest(
            f"{where}.{sorted(map(str, unknown))[0]}",
            "unknown item field; items take name, quantity, station and notes",
        )
    name = _required_text(entry.get("name"), f"{where}.name", MAX_NAME_LENGTH)
    quantity = entry.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidRequest(
            f"{where}.quantity",
            f"must be a whole number from 1 to {MAX_QUANTITY}, not {_show(quantity)}",
        )
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidRequest(
            f"{where}.quantity", f"must be from 1 to {MAX_QUANTITY}, not {quantity}"
        )
    station = _text(entry.get("station"), f"{where}.station", MAX_STATION_LENGTH)
    notes = _text(entry.get("notes"), f"{where}.notes", MAX_NOTES_LENGTH, allow_empty=True)
    return Item(name, quantity, station, notes)


def parse_meta(value: Any, field_name: str = "meta") -> dict[str, Any]:
    """Validate a free JSON object of at most 16 KiB."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(field_name, f"must be a JSON object, not {_show(value)}")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(field_name, f"must contain only JSON values ({exc})") from None
    if len(encoded.encode()) > MAX_META_BYTES:
        raise InvalidRequest(field_name, f"is larger than {MAX_META_BYTES} bytes as JSON")
    # Round-trip through JSON so the stored value is plain data, detached
    # from any object the caller keeps changing.
    result: dict[str, Any] = json.loads(encoded)
    return result


def parse_new_order(body: Any, *, default_location: str = "main") -> NewOrder:
    """Validate the body of ``POST /orders`` (or the engine's create arguments)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("body", "must be a JSON object with 'items'")
    _reject_unknown(body, {"id", "location", "items", "meta", "actor"})
    if "items" not in body:
        raise InvalidRequest(
            "items", 'is required; send a list such as [{"name": "Margherita", "quantity": 1}]'
        )
    order_id = body.get("id")
    location = body.get("location")
    return NewOrder(
        items=parse_items(body["items"]),
        id=None if order_id is None else validate_order_id(order_id),
        location=validate_location(default_location if location is None else location),
        meta=parse_meta(body.get("meta")),
        actor=_text(body.get("actor"), "actor", MAX_ACTOR_LENGTH),
    )


def parse_transition(order_id: Any, body: Any, lifecycle: Lifecycle) -> TransitionRequest:
    """Validate the body of ``POST /orders/{id}/transitions``.

    An unknown target state is bad input (422); a known state that the
    order cannot reach from where it is becomes ``InvalidTransition`` later.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("body", "must be a JSON object with 'to'")
    _reject_unknown(body, {"to", "expected_version", "reason", "actor"})
    target = body.get("to")
    if not isinstance(target, str) or target not in lifecycle.states:
        raise InvalidRequest(
            "to",
            f"unknown state {_show(target)}; known states: {', '.join(lifecycle.states)}",
        )
    return TransitionRequest(
        order_id=validate_order_id(order_id, "order_id"),
        to=target,
        expected_version=_version(body.get("expected_version")),
        reason=_text(body.get("reason"), "reason", MAX_REASON_LENGTH, allow_empty=True),
        actor=_text(body.get("actor"), "actor", MAX_ACTOR_LENGTH),
    )


def parse_update(order_id: Any, body: Any) -> UpdateRequest:
    """Validate a request that replaces items, meta or both."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("body", "must be a JSON object with 'items' or 'meta'")
    _reject_unknown(body, {"items", "meta", "expected_version", "actor"})
    if body.get("items") is None and body.get("meta") is None:
        raise InvalidRequest("items", "send 'items', 'meta' or both to update an order")
    return UpdateRequest(
        order_id=validate_order_id(order_id, "order_id"),
        items=None if body.get("items") is None else parse_items(body["items"]),
        meta=None if body.get("meta") is None else parse_meta(body["meta"]),
        expected_version=_version(body.get("expected_version")),
        actor=_text(body.get("actor"), "actor", MAX_ACTOR_LENGTH),
    )


def _reject_unknown(body: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(str(key) for key in body if key not in known)
    if unknown:
        raise InvalidRequest(
            unknown[0], f"unknown field; this request takes {', '.join(sorted(known))}"
        )


def _version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(
            "expected_version", f"must be a whole number of at least 1, not {_show(value)}"
        )
    return value


def _required_text(value: Any, field_name: str, max_length: int) -> str:
    if value is None:
        raise InvalidRequest(field_name, "is required; send a non-empty string")
    return _checked_text(value, field_name, max_length, allow_empty=False)


def _text(value: Any, field_name: str, max_length: int, *, allow_empty: bool = False) -> str | None:
    if value is None:
        return None
    return _checked_text(value, field_name, max_length, allow_empty=allow_empty)


def _checked_text(value: Any, field_name: str, max_length: int, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(field_name, f"must be a string, not {_show(value)}")
    if not allow_empty and not value.strip():
        raise InvalidRequest(field_name, "must not be empty")
    if len(value) > max_length:
        raise InvalidRequest(field_name, f"is longer than {max_length} characters")
    return value


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value, default=repr)
    except (TypeError, ValueError):
        # Keys that JSON cannot hold, or a container that contains itself.
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
