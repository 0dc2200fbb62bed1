"""A queue that any thread can fill and one consumer drains, sync or async.

Brokers deliver from threads that are not the consumer's: the committing
worker thread, a Redis listener thread. The async consumer may run on
asyncio or trio, so the wake-up goes through a socket pair that the consumer
waits on with ``anyio.wait_readable``. That works on every anyio backend,
and it costs one small write only when the consumer is actually asleep.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import deque
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")

__all__ = ["Inbox", "InboxClosed"]


class InboxClosed(Exception):
    """Raised to the consumer of an inbox that was closed and is empty."""


class Inbox(Generic[T]):
    """A bounded multi-producer, single-consumer queue.

    ``put`` never blocks: when ``max_items`` are waiting, the new item is
    dropped and counted in ``dropped``, so a stalled consumer cannot make a
    producer (a committing writer, a broker thread) wait.
    """

    def __init__(self, max_items: int = 100_000) -> None:
        self._items: deque[T] = deque()
        self._max_items = max_items
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._closed = False
        self._sleeping = False
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Add ``item`` from any thread; return False if it was dropped."""
        with self._lock:
            if self._closed:
                return False
            if len(self._items) >= self._max_items:
                self.dropped += 1
                return False
            self._items.append(item)
            self._ready.notify()
            wake = self._sleeping
            self._sleeping = False
        if wake:
            self._wake()
        return True

    def _wake(self) -> None:
        writer = self._wake_writer
        if writer is not None:
            # A full socket buffer already contains a wake-up; a closed one
            # belongs to a closed inbox.
            with contextlib.suppress(OSError):
                writer.send(b"\0")

    def get_nowait(self) -> list[T]:
        """Return every waiting item (possibly none) without blocking."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            return items

    async def get(self) -> list[T]:
        """Wait until at least one item is waiting, then return all of them.

        Raises ``InboxClosed`` once the inbox is closed and empty.
        """
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
                if self._closed:
                    raise InboxClosed
                if self._wake_reader is None:
                    self._wake_reader, self._wake_writer = socket.socketpair()
                    self._wake_reader.setblocking(False)
                    self._wake_writer.setblocking(False)
                self._sleeping = True
                reader = self._wake_reader
            try:
                await anyio.wait_readable(reader)
            finally:
                with self._lock:
                    self._sleeping = False
            try:
                while reader.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def wait(self, timeout: float | None = None) -> list[T]:
        """Block the calling thread until items arrive or ``timeout`` seconds pass."""
        with self._lock:
            if not self._items and not self._closed:
                self._ready.wait(timeout)
            if not self._items and self._closed:
                raise InboxClosed
            items = list(self._items)
            self._items.clear()
            return items

    def close(self) -> None:
        """Close the inbox; the consumer gets what is left, then ``InboxClosed``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._ready.notify_all()
        self._wake()

    def release(self) -> None:
        """Close the inbox and its wake-up sockets; call after the consumer stopped."""
        self.close()
        with self._lock:
            sockets = (self._wake_reader, self._wake_writer)
            self._wake_reader = self._wake_writer = None
        for sock in sockets:
            if sock is not None:
                sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
