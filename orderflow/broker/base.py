"""The broker interface that every broker adapter implements.

A broker only makes delivery fast. It may lose, delay or drop publications,
and the engine never waits for it: ``publish`` hands the event over and
returns. Subscribers detect what was lost from the gap in seq numbers (or
from the event log's head) and read it back from the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._inbox import Inbox
from ..models import Event

__all__ = ["Broker", "BrokerHealth", "Publication", "Subscription"]


@dataclass(frozen=True, slots=True)
class Publication:
    """What a subscriber receives: one event, or only its position.

    ``event`` is None when the broker carried a notice instead of the event,
    for example because the event was over the broker's size limit; the
    subscriber then reads event ``seq`` of ``location`` from the log.
    """

    location: str
    seq: int
    event: Event | None


@dataclass(frozen=True, slots=True)
class BrokerHealth:
    """Whether the broker is delivering, with a short reason when it is not."""

    ok: bool
    detail: str = "ok"


class Subscription(Protocol):
    """Publications for a set of locations, consumed by one task or thread."""

    async def receive(self) -> list[Publication]:
        """Wait for at least one publication and return all that are waiting.

        Raises ``orderflow._inbox.InboxClosed`` after ``close``.
        """
        ...

    def receive_nowait(self) -> list[Publication]: ...

    def wait(self, timeout: float | None = None) -> list[Publication]:
        """Block the calling thread until publications arrive or ``timeout`` passes."""
        ...

    @property
    def dropped(self) -> int:
        """How many publications were dropped because the consumer lagged."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Broker(Protocol):
    """Publish-subscribe transport for committed events.

    ``publish`` is thread-safe, never blocks on the network and never
    raises: failures are logged by the adapter and repaired by readers from
    the event log.
    """

    @property
    def url(self) -> str: ...

    @property
    def in_process(self) -> bool:
        """True when publications reach only subscribers in this process."""
        ...

    def start(self) -> None:
        """Start background work such as connections; idempotent."""
        ...

    def publish(self, event: Event) -> None: ...

    def subscribe(
        self, locations: Iterable[str] | None = None, inbox: Inbox[Publication] | None = None
    ) -> Subscription:
        """Subscribe to ``locations`` (None for every location).

        With ``inbox``, publications go into that inbox, which the caller may
        share between subscriptions and keeps open when the subscription closes.
        """
        ...

    def health(self) -> BrokerHealth: ...

    def close(self) -> None: ...
