"""The WebSocket feed of one screen: a snapshot or a resume, then live events.

The first message carries the cursor. A resume needs the current epoch, a
``since`` inside the retained log, not above the head and at most
``max_replay`` events behind; anything else gets a snapshot. The subscriber
is registered at the head before the first message is built, and replayed
events stop at that head, so nothing is skipped or sent twice at the switch
from replay to live.

Live events are encoded once per event as a complete text frame (server
frames are unmasked and no extension is negotiated), and the same bytes go
to every screen.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import anyio.lowlevel
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.events import (
    Request as WSRequest,
)
from wsproto.utilities import LocalProtocolError

from ..errors import HistoryTruncated, StorageError, SubscriberDropped
from ..feed import Attachment, FeedSubscriber, LocationFeed
from ..models import Event, dumps

if TYPE_CHECKING:
    from .config import ServerConfig
    from .http import Request

__all__ = ["SUBPROTOCOL", "WebSocketSession", "event_frame", "text_frame"]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "orderflow.v1"
CLOSE_RESYNC = 4000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009


def text_frame(payload: bytes) -> bytes:
    """Encode one unmasked, unfragmented text frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


def event_frame(event: Event) -> bytes:
    """Return the frame of ``{"type": "event", ...}`` for ``event``, encoded once."""
    frame: bytes | None = event._cache.get("ws")
    if frame is None:
        frame = text_frame(('{"type":"event",' + event.to_json()[1:]).encode())
        event._cache["ws"] = frame
    return frame


class _Closed(Exception):
    """The session is over; ``code`` is the close code sent or received."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class WebSocketSession:
    """One screen's connection after the upgrade was accepted."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        config: ServerConfig,
        session_id: str,
        feed: LocationFeed,
    ) -> None:
        self.stream = stream
        self.config = config
        self.id = session_id
        self.feed = feed
        self.ws = WSConnection(ConnectionType.SERVER)
        # An uncontended acquire takes no checkpoint of its own, because the
        # send inside the lock yields to the event loop anyway.
        self._write_lock = anyio.Lock(fast_acquire=True)
        self._subscriber: FeedSubscriber | None = None
        self._stop_reason: str | None = None
        self._reader_done = anyio.Event()
        self._close: _Closed | None = None
        self.sent_events = 0
        self.outcome = ""

    # Handshake.

    def accept(self, request: Request, trailing: bytes) -> bytes:
        """Complete the upgrade and return the 101 response bytes."""
        self.ws.initiate_upgrade_connection(request.headers, request.target)
        subprotocols: list[str] = []
        for event in self.ws.events():
            if isinstance(event, WSRequest):
                subprotocols = list(event.subprotocols)
        chosen = SUBPROTOCOL if SUBPROTOCOL in subprotocols else None
        data = self.ws.send(AcceptConnection(subprotocol=chosen))
        if trailing:
            self.ws.receive_data(trailing)
        return data

    # The session.

    async def run(self, since: int | None, epoch: str | None) -> None:
        """Serve the screen until it leaves, falls behind, or the server stops."""
        started = time.monotonic()
        try:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._read_loop, task_group.cancel_scope)
                with contextlib.suppress(_Closed):
                    await self._serve_feed(since, epoch)
                task_group.cancel_scope.cancel()
        finally:
            if self._subscriber is not None:
                self._subscriber.close()
        close = self._close or _Closed(1006, "connection lost")
        logger.info(
            "screen %s of location %r left after %.1f s: %s, close %d %s, %d events sent",
            self.id,
            self.feed.location,
            time.monotonic() - started,
            self.outcome,
            close.code,
            close.reason,
            self.sent_events,
        )

    def stop(self, reason: str) -> None:
        """Ask the session to send ``resync`` with ``reason`` and close (server shutdown)."""
        self._stop_reason = reason
        if self._subscriber is not None:
            self._subscriber._end(reason)

    async def _serve_feed(self, since: int | None, epoch: str | None) -> None:
        feed = self.feed
        attachment = feed.attach(since, epoch, self.config.max_replay)
        self._subscriber = attachment.subscriber
        await self._send_start(attachment)
        if self._stop_reason is not None:
            await self._resync(self._stop_reason)

        subscriber = attachment.subscriber
        heartbeat_at = anyio.current_time() + self.config.heartbeat_interval
        while True:
            batch: list[Event] | None = None
            with anyio.move_on_after(max(heartbeat_at - anyio.current_time(), 0)):
                try:
                    batch = await subscriber.next_batch()
                except SubscriberDropped as dropped:
                    await self._resync(dropped.reason)
            if batch:
                await self._send(b"".join(event_frame(event) for event in batch))
                self.sent_events += len(batch)
            # A heartbeat goes out when due, also between batches under steady
            # traffic, but only while nothing is queued for this screen.
            if anyio.current_time() >= heartbeat_at and subscriber.pending() == 0:
                # Nothing is queued, so the head is exactly the last event this
                # screen was sent, and the digest is of the state it built.
                await self._send_text(
                    f'{{"type":"heartbeat","head":{feed.head},"digest":"{feed.digest}"}}'
                )
                heartbeat_at = anyio.current_time() + self.config.heartbeat_interval

    async def _send_start(self, attachment: Attachment) -> None:
        # The first message waits for one pass of the event loop after the 101
        # response, so it rarely shares a read with it: some clients drop
        # frames that arrive in the same read as the 101.
        await anyio.lowlevel.checkpoint()
        feed = self.feed
        if attachment.kind == "snapshot":
            self.outcome = f"snapshot at {attachment.head}"
            body = attachment.snapshot_json or feed.snapshot_json()
            await self._send_text('{"type":"snapshot",' + body[1:])
            logger.info(
                "screen %s of location %r started from a snapshot at seq %d (%d orders)",
                self.id,
                feed.location,
                attachment.head,
                len(attachment.snapshot.orders) if attachment.snapshot else 0,
            )
            return

        since = attachment.since if attachment.since is not None else attachment.head
        self.outcome = f"resumed from {since}"
        await self._send_text(
            f'{{"type":"resumed","epoch":{dumps(attachment.epoch)},"since":{since},'
            f'"head":{attachment.head}}}'
        )
        replayed = 0
        if attachment.replay is not None:
            batches = [attachment.replay] if attachment.replay else []
            for batch in batches:
                await self._send(b"".join(event_frame(event) for event in batch))
                replayed += len(batch)
        else:
            try:
                cursor = since
                while cursor < attachment.head:
                    batch = await feed.read_page(cursor, attachment.head)
                    await self._send(b"".join(event_frame(event) for event in batch))
                    replayed += len(batch)
                    cursor = batch[-1].seq
            except (StorageError, HistoryTruncated) as exc:
                logger.warning(
                    "screen %s of location %r: replay from seq %d failed, asking it to resync: %s",
                    self.id,
                    feed.location,
                    since,
                    exc,
                )
                await self._resync(
                    "truncated" if isinstance(exc, HistoryTruncated) else "storage_unavailable"
                )
        self.sent_events += replayed
        logger.info(
            "screen %s of location %r resumed from seq %d to %d (%d events replayed)",
            self.id,
            feed.location,
            since,
            attachment.head,
            replayed,
        )

    async def _resync(self, reason: str) -> None:
        """Send ``resync`` and close with 4000; the screen resumes from its seq."""
        try:
            with anyio.move_on_after(self.config.send_timeout):
                await self._send_text(f'{{"type":"resync","reason":{dumps(reason)}}}')
        except _Closed:
            pass
        await self._send_close(CLOSE_RESYNC, reason, wait_for_reply=True)

    # Reading: pings, close frames and the limits on client messages.

    async def _read_loop(self, scope: anyio.CancelScope) -> None:
        message_size = 0
        try:
            while True:
                try:
                    data: bytes | None = await self.stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    data = None
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, Ping):
                        await self._send(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        await self._answer_close(event)
                    elif isinstance(event, BytesMessage):
                        await self._send_close(
                            CLOSE_UNSUPPORTED, "binary messages are not supported"
                        )
                    elif isinstance(event, TextMessage):
                        # Screens need not send anything; text is read and
                        # dropped, but its size is limited.
                        message_size += len(event.data.encode())
                        if message_size > self.config.max_ws_message_bytes:
                            await self._send_close(
                                CLOSE_TOO_BIG,
                                f"messages are limited to {self.config.max_ws_message_bytes} bytes",
                            )
                        if event.message_finished:
                            message_size = 0
        except (_Closed, LocalProtocolError):
            scope.cancel()
        finally:
            self._reader_done.set()

    async def _answer_close(self, event: CloseConnection) -> None:
        state = self.ws.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The screen started the closing handshake: echo it and stop.
            self._close = _Closed(event.code, event.reason or "closed by the screen")
            await self._send(self.ws.send(event.response()))
            raise self._close
        if state is ConnectionState.CLOSED:
            # The transport ended, or the screen answered our close frame.
            if self._close is None:
                self._close = _Closed(event.code, "connection lost")
            raise self._close
        # Still open: wsproto reports a protocol violation of the screen (for
        # example invalid UTF-8, code 1007) as a close event with its code.
        await self._send_close(event.code, event.reason or "protocol error")

    async def _send_close(self, code: int, reason: str, *, wait_for_reply: bool = False) -> None:
        """Send a close frame with ``code`` and end the session."""
        self._close = _Closed(code, reason)
        try:
            await self._send(self.ws.send(CloseConnection(code=code, reason=reason[:120])))
        except (_Closed, LocalProtocolError):
            raise self._close from None
        if wait_for_reply:
            with anyio.move_on_after(1.0):
                await self._reader_done.wait()
        raise self._close

    # Writing.

    async def _send_text(self, text: str) -> None:
        await self._send(text_frame(text.encode()))

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        try:
            async with self._write_lock:
                # fail_after without its two generator context managers (anyio
                # 4.16), because this runs for every batch sent to every screen.
                deadline = anyio.current_time() + self.config.send_timeout
                with anyio.CancelScope(deadline=deadline) as scope:
                    await self.stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._close = self._close or _Closed(1006, "connection lost")
            raise self._close from None
        if scope.cancelled_caught:
            self._close = self._close or _Closed(1006, "send timed out; the screen stopped reading")
            raise self._close
