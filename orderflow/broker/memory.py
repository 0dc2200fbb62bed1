"""The in-process broker: the embedded default.

Publications go straight into the inboxes of subscribers in the same
process, so a server with SQLite and this broker needs nothing else running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from .._inbox import Inbox
from ..models import Event
from .base import BrokerHealth, Publication

__all__ = ["InboxSubscription", "MemoryBroker"]


class InboxSubscription:
    """A subscription whose publications wait in an ``Inbox``."""

    def __init__(
        self,
        locations: Iterable[str] | None,
        on_close: Callable[[InboxSubscription], None] | None = None,
        inbox: Inbox[Publication] | None = None,
    ) -> None:
        if isinstance(locations, str):
            raise TypeError(
                f"locations must be a list of location names, not the string {locations!r}"
            )
        self.locations: frozenset[str] | None = None if locations is None else frozenset(locations)
        # An inbox passed in belongs to the caller, who may share it between
        # several subscriptions; closing the subscription leaves it open.
        self._owns_inbox = inbox is None
        self.inbox: Inbox[Publication] = Inbox() if inbox is None else inbox
        self._on_close = on_close

    def wants(self, location: str) -> bool:
        return self.locations is None or location in self.locations

    async def receive(self) -> list[Publication]:
        return await self.inbox.get()

    def receive_nowait(self) -> list[Publication]:
        return self.inbox.get_nowait()

    def wait(self, timeout: float | None = None) -> list[Publication]:
        return self.inbox.wait(timeout)

    @property
    def dropped(self) -> int:
        return self.inbox.dropped

    def close(self) -> None:
        if self._owns_inbox:
            self.inbox.release()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(self)


class MemoryBroker:
    """Delivers publications to subscribers of this process only."""

    def __init__(self) -> None:
        self._subscriptions: tuple[InboxSubscription, ...] = ()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return "memory://"

    @property
    def in_process(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def publish(self, event: Event) -> None:
        publication = Publication(event.order.location, event.seq, event)
        for subscription in self._subscriptions:
            if subscription.wants(publication.location):
                subscription.inbox.put(publication)

    def subscribe(
        self, locations: Iterable[str] | None = None, inbox: Inbox[Publication] | None = None
    ) -> InboxSubscription:
        subscription = InboxSubscription(locations, self._remove, inbox)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def _remove(self, subscription: InboxSubscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    def health(self) -> BrokerHealth:
        return BrokerHealth(True)

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
