"""The orderflow error tree.

Every error that orderflow raises on purpose derives from ``OrderflowError``.
Errors that a client can cause carry the HTTP status and the stable ``code``
of the wire contract, so the server maps them to problem documents without a
lookup table of its own::

    OrderflowError
    ├── RequestError                   4xx, the caller can fix the request
    │   ├── InvalidJSON                400 invalid_json
    │   ├── InvalidRequest             422 invalid_request (names the field)
    │   │   └── ReasonRequired         422 invalid_request, field "reason"
    │   ├── PayloadTooLarge            413 payload_too_large
    │   ├── Unauthorized               401 unauthorized
    │   ├── Forbidden                  403 forbidden (role missing)
    │   ├── NotFound                   404 not_found
    │   │   └── OrderNotFound
    │   ├── Conflict                   409
    │   │   ├── VersionConflict        409 version_conflict
    │   │   ├── InvalidTransition      409 invalid_transition
    │   │   ├── OrderNotEditable       409 invalid_transition
    │   │   ├── IdConflict             409 id_conflict
    │   │   └── IdempotencyKeyReused   409 idempotency_key_reused
    │   └── HistoryTruncated           410 history_truncated
    │       └── EpochMismatch          410 history_truncated
    ├── StorageError                   503 storage_unavailable
    │   ├── StorageUnavailable         the database cannot be reached
    │   ├── StorageBusy                a lock wait timed out
    │   ├── UnknownOutcome             the commit may or may not have happened
    │   └── TransactionAborted         an earlier failure spoiled the transaction
    ├── BrokerError                    never reaches a caller of a transition
    ├── SubscriberDropped              a feed stopped serving a subscriber
    ├── LifecycleError                 a lifecycle definition is invalid
    ├── ImportFormatError              a data-set row is malformed (orderflow.importer)
    └── ConfigurationError             a URL or an option is invalid

Storage and broker adapters translate driver exceptions into these classes
with ``raise ... from exc``, so callers never need to import a driver to
handle a failure.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BrokerError",
    "ConfigurationError",
    "Conflict",
    "EpochMismatch",
    "Forbidden",
    "HistoryTruncated",
    "IdConflict",
    "IdempotencyKeyReused",
    "InvalidJSON",
    "InvalidRequest",
    "InvalidTransition",
    "LifecycleError",
    "NotFound",
    "OrderNotEditable",
    "OrderNotFound",
    "OrderflowError",
    "PayloadTooLarge",
    "ReasonRequired",
    "RequestError",
    "StorageBusy",
    "StorageError",
    "StorageUnavailable",
    "SubscriberDropped",
    "TransactionAborted",
    "Unauthorized",
    "UnknownOutcome",
    "VersionConflict",
]


class OrderflowError(Exception):
    """Base class of every error that orderflow raises on purpose.

    ``status`` is the HTTP status the server responds with, ``code`` the
    stable machine-readable code and ``title`` the short human summary of
    the problem type. ``detail`` (the exception message) explains this
    occurrence.
    """

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def problem_extensions(self) -> dict[str, object]:
        """Return the extra members of this error's problem document."""
        return {}


class RequestError(OrderflowError):
    """A request that the caller can fix; nothing was changed."""

    status = 400
    code = "invalid_request"
    title = "Invalid request"


class InvalidJSON(RequestError):
    """A request body that is not valid JSON in UTF-8."""

    status = 400
    code = "invalid_json"
    title = "Malformed JSON"


class InvalidRequest(RequestError):
    """A well-formed request with a field that has a wrong type or value.

    ``field`` is a dotted path such as ``items.0.quantity``.
    """

    status = 422
    code = "invalid_request"
    title = "Invalid request"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field

    def problem_extensions(self) -> dict[str, object]:
        return {"field": self.field}


class ReasonRequired(InvalidRequest):
    """A transition that the lifecycle declares with a required reason."""

    def __init__(self, order_id: str, target: str) -> None:
        super().__init__(
            "reason",
            f"a transition to {target} requires a reason; send a non-empty 'reason' string",
        )
        self.order_id = order_id
        self.target = target


class PayloadTooLarge(RequestError):
    """A request body or message over the configured size limit."""

    status = 413
    code = "payload_too_large"
    title = "Payload too large"

    def __init__(self, limit: int, detail: str | None = None) -> None:
        super().__init__(detail or f"the request body is larger than {limit} bytes")
        self.limit = limit

    def problem_extensions(self) -> dict[str, object]:
        return {"limit": self.limit}


class Unauthorized(RequestError):
    """A request without valid credentials on a server that requires them."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(RequestError):
    """A transition that requires a role the caller does not have."""

    status = 403
    code = "forbidden"
    title = "Forbidden"

    def __init__(self, detail: str, required_roles: Iterable[str] = ()) -> None:
        super().__init__(detail)
        self.required_roles = tuple(sorted(required_roles))

    def problem_extensions(self) -> dict[str, object]:
        return {"required_roles": list(self.required_roles)}


class NotFound(RequestError):
    """A resource that does not exist."""

    status = 404
    code = "not_found"
    title = "Not found"


class OrderNotFound(NotFound):
    """An order id that no order has."""

    def __init__(self, order_id: str) -> None:
        super().__init__(f"no order has the id {order_id!r}")
        self.order_id = order_id

    def problem_extensions(self) -> dict[str, object]:
        return {"order_id": self.order_id}


class Conflict(RequestError):
    """A request that conflicts with the current state of an order."""

    status = 409
    code = "conflict"
    title = "Conflict"


class VersionConflict(Conflict):
    """An expected version that is not the order's current version."""

    code = "version_conflict"
    title = "Version conflict"

    def __init__(self, order_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"order {order_id!r} is at version {actual}, not {expected}; "
            "read the order again and retry with its current version"
        )
        self.order_id = order_id
        self.expected = expected
        self.actual = actual

    def problem_extensions(self) -> dict[str, object]:
        return {
            "order_id": self.order_id,
            "expected_version": self.expected,
            "actual_version": self.actual,
        }


class InvalidTransition(Conflict):
    """A target state that the lifecycle does not allow from the current state."""

    code = "invalid_transition"
    title = "Invalid transition"

    def __init__(self, order_id: str, state: str, target: str, allowed: Iterable[str]) -> None:
        self.allowed = tuple(sorted(allowed))
        if self.allowed:
            hint = "allowed targets: " + ", ".join(self.allowed)
        else:
            hint = f"{state} is a terminal state"
        super().__init__(f"order {order_id!r} cannot go from {state} to {target}; {hint}")
        self.order_id = order_id
        self.state = state
        self.target = target

    def problem_extensions(self) -> dict[str, object]:
        return {
            "order_id": self.order_id,
            "state": self.state,
            "target": self.target,
            "allowed": list(self.allowed),
        }


class OrderNotEditable(Conflict):
    """A change of items or meta in a state where the lifecycle forbids it."""

    code = "invalid_transition"
    title = "Order not editable"

    def __init__(self, order_id: str, state: str, editable: Iterable[str]) -> None:
        self.editable = tuple(sorted(editable))
        super().__init__(
            f"order {order_id!r} is {state}; items and meta can change only in "
            f"these states: {', '.join(self.editable) or 'none'}"
        )
        self.order_id = order_id
        self.state = state

    def problem_extensions(self) -> dict[str, object]:
        return {"order_id": self.order_id, "state": self.state, "editable": list(self.editable)}


class IdConflict(Conflict):
    """A client-supplied order id that another order already has."""

    code = "id_conflict"
    title = "Order id taken"

    def __init__(self, order_id: str) -> None:
        super().__init__(
            f"an order with the id {order_id!r} already exists; "
            "choose another id or omit it to have one generated"
        )
        self.order_id = order_id

    def problem_extensions(self) -> dict[str, object]:
        return {"order_id": self.order_id}


class IdempotencyKeyReused(Conflict):
    """An idempotency key seen before with a different request body."""

    code = "idempotency_key_reused"
    title = "Idempotency key reused"

    def __init__(self, key: str, location: str) -> None:
        super().__init__(
            f"the idempotency key {key!r} was already used in location "
            f"{location!r} for a different request; use a new key for a new request"
        )
        self.key = key
        self.location = location


class HistoryTruncated(RequestError):
    """A cursor below the retained range of a location's event log."""

    status = 410
    code = "history_truncated"
    title = "History truncated"

    def __init__(self, location: str, since: int, oldest: int, detail: str | None = None) -> None:
        super().__init__(
            detail
            or (
                f"events after seq {since} of location {location!r} are no longer "
                f"retained (the log starts after seq {oldest}); take a snapshot"
            )
        )
        self.location = location
        self.since = since
        self.oldest = oldest

    def problem_extensions(self) -> dict[str, object]:
        return {"location": self.location, "since": self.since, "retained_after": self.oldest}


class EpochMismatch(HistoryTruncated):
    """A cursor from another epoch of a location's event log."""

    def __init__(self, location: str, since: int, epoch: str, current: str) -> None:
        super().__init__(
            location,
            since,
            0,
            detail=(
                f"epoch {epoch!r} is not the current epoch {current!r} of location "
                f"{location!r}, because the log was reset or restored; take a snapshot"
            ),
        )
        self.epoch = epoch
        self.current = current

    def problem_extensions(self) -> dict[str, object]:
        return {"location": self.location, "epoch": self.epoch, "current_epoch": self.current}


class StorageError(OrderflowError):
    """A failure of the database; the request may be retried."""

    status = 503
    code = "storage_unavailable"
    title = "Storage unavailable"


class StorageUnavailable(StorageError):
    """The database cannot be reached or refused the connection."""


class StorageBusy(StorageError):
    """A lock on the database was not granted within the busy timeout."""


class UnknownOutcome(StorageError):
    """The connection was lost during COMMIT, so the write may have happened.

    Retry with the same idempotency key: a committed write returns its first
    result and an uncommitted one is applied once.
    """


class TransactionAborted(StorageError):
    """A write in this transaction failed, so it can only be rolled back."""


class BrokerError(OrderflowError):
    """A broker failure; logged by the engine, never raised by a transition."""


class SubscriberDropped(OrderflowError):
    """A feed stopped serving a subscriber; resume from its last seq.

    ``reason`` is ``"slow_consumer"`` (its queue overflowed), ``"epoch"``
    (the log got a new epoch, so only a snapshot is valid), ``"truncated"``
    (the retained log no longer reaches back to it) or ``"shutdown"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the feed dropped this subscriber: {reason}")
        self.reason = reason


class LifecycleError(OrderflowError, ValueError):
    """An invalid lifecycle definition. ``state`` names the offending state, if any."""

    def __init__(self, detail: str, state: str | None = None) -> None:
        super().__init__(detail)
        self.state = state


class ConfigurationError(OrderflowError, ValueError):
    """An invalid URL or option passed to orderflow."""
