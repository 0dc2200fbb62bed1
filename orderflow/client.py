"""A Python client for screens and for the HTTP API.

``Screen`` keeps a mirror of one location's active orders in step with a
server over the WebSocket feed, and applies the client rule:

- apply an event iff its seq is the mirror's last seq + 1; ignore seq <= last;
- on seq > last + 1, or a heartbeat with head > last that no event follows
  within a second, reconnect with ``since=last``;
- on a heartbeat with head == last whose digest differs from the mirror's
  own, reconnect without ``since`` and take a snapshot;
- on ``resync``, a dropped connection or a silent one, reconnect with
  ``since=last``, with exponential backoff and jitter while connecting
  fails, trying the server URLs in turn.

``HttpClient`` is a small keep-alive HTTP client for the API calls.
Both run on asyncio and trio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import anyio.abc
import h11
from anyio.streams.memory import MemoryObjectSendStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import (
    Request as WSRequest,
)
from wsproto.utilities import RemoteProtocolError

from .digest import contribution, format_digest
from .errors import OrderflowError
from .lifecycle import DEFAULT_LIFECYCLE

__all__ = ["ApiError", "HttpClient", "Mirror", "Screen", "ScreenChange"]

logger = logging.getLogger(__name__)

SUBPROTOCOL = "orderflow.v1"


class ApiError(OrderflowError):
    """An error response of the server, with its problem document.

    ``status`` and ``code`` are those of the response; ``problem`` is the
    whole decoded problem document (empty if the body was not JSON).
    """

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
        super().__init__(detail)
        self.status = status
        self.code = str(problem.get("code", "http_error"))
        self.title = str(problem.get("title", ""))
        self.problem = dict(problem)


# The mirror: pure state, no I/O.


@dataclass(frozen=True, slots=True)
class ScreenChange:
    """A change in a mirror: a whole snapshot, or one event."""

    kind: str  # "snapshot" or "event"
    seq: int
    event: Mapping[str, Any] | None = None


class Mirror:
    """The active orders of one location as a screen has built them.

    Orders are the JSON objects of the wire format. ``last`` is the seq of
    the last event applied (or the head of the last snapshot).
    """

    def __init__(self, terminal_states: Iterable[str] = DEFAULT_LIFECYCLE.terminal) -> None:
        self.terminal_states = frozenset(terminal_states)
        self.epoch: str | None = None
        self.last = 0
        self.orders: dict[str, dict[str, Any]] = {}
        # Each order's share of the digest is hashed when the digest is read
        # (on a heartbeat), not on every event, because a replay changes one
        # order many times between two heartbeats.
        self._shares: dict[str, int] = {}
        self._unhashed: set[str] = set()
        self._digest_sum = 0

    @property
    def digest(self) -> str:
        if self._unhashed:
            for order_id in self._unhashed:
                share = contribution(order_id, self.orders[order_id]["version"])
                self._shares[order_id] = share
                self._digest_sum += share
            self._unhashed.clear()
        return format_digest(self._digest_sum)

    def load_snapshot(self, message: Mapping[str, Any]) -> None:
        self.epoch = message["epoch"]
        self.last = message["head"]
        self.orders = {order["id"]: order for order in message["orders"]}
        self._shares = {}
        self._unhashed = set(self.orders)
        self._digest_sum = 0

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Apply ``event`` if it is the next one; return whether it was applied.

        Raises ``ValueError`` for a gap (seq > last + 1): the caller must
        resume from ``last``.
        """
        seq = event["seq"]
        if seq <= self.last:
            return False
        if seq != self.last + 1:
            raise ValueError(f"gap: event {seq} arrived after {self.last}")
        order = event["order"]
        order_id = order["id"]
        share = self._shares.pop(order_id, None)
        if share is not None:
            self._digest_sum -= share
        if order["state"] in self.terminal_states:
            self.orders.pop(order_id, None)
            self._unhashed.discard(order_id)
        else:
            self.orders[order_id] = order
            self._unhashed.add(order_id)
        self.last = seq
        return True

    def states(self) -> dict[str, tuple[str, int]]:
        """Return ``{order id: (state, version)}``, handy for comparisons."""
        return {order_id: (o["state"], o["version"]) for order_id, o in self.orders.items()}


# A minimal WebSocket client connection.


class _WebSocket:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self._parts: list[str] = []
        self._pending: deque[Any] = deque()
        self.close_code: int | None = None

    @classmethod
    async def connect(cls, url: str, timeout: float) -> _WebSocket:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
            socket = cls(stream)
            try:
                await socket._handshake(
                    parts.netloc, parts.path + ("?" + parts.query if parts.query else "")
                )
            except BaseException:
                await stream.aclose()
                raise
        return socket

    async def _handshake(self, host: str, target: str) -> None:
        await self.stream.send(
            self.ws.send(WSRequest(host=host, target=target, subprotocols=[SUBPROTOCOL]))
        )
        reject: RejectConnection | None = None
        body = b""
        while True:
            data = await self.stream.receive(65536)
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    # wsproto buffers frames that came in the same read as
                    # the 101 response, and only events() returns them.
                    self._pending.extend(self.ws.events())
                    return
                if isinstance(event, RejectConnection):
                    reject = event
                    if not event.has_body:
                        raise ApiError(event.status_code, {})
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        status = reject.status_code if reject else 400
                        try:
                            problem = json.loads(body)
                        except ValueError:
                            problem = {"detail": body.decode(errors="replace")}
                        raise ApiError(status, problem)
                else:
                    self._pending.append(event)

    def _decode(self) -> dict[str, Any]:
        text = "".join(self._parts)
        self._parts.clear()
        try:
            message = json.loads(text)
        except ValueError:
            raise _Reconnect(f"invalid JSON message: {text[:80]!r}") from None
        if not isinstance(message, dict):
            raise _Reconnect(f"invalid message, not a JSON object: {text[:80]!r}")
        return message

    def receive_buffered(self) -> dict[str, Any] | None:
        """Return the next message if it already arrived whole, else None; never waits.

        Pings and close frames stay queued for ``receive``, which replies to them.
        """
        pending = self._pending
        while pending and isinstance(pending[0], TextMessage):
            event = pending.popleft()
            self._parts.append(event.data)
            if event.message_finished:
                return self._decode()
        return None

    async def receive(self) -> dict[str, Any] | None:
        """Return the next JSON message, or None when the connection closed."""
        while True:
            while self._pending:
                event = self._pending.popleft()
                if isinstance(event, TextMessage):
                    self._parts.append(event.data)
                    if event.message_finished:
                        return self._decode()
                elif isinstance(event, Ping):
                    await self.stream.send(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close_code = event.code
                    with contextlib.suppress(Exception):  # the server may be gone already
                        await self.stream.send(self.ws.send(event.response()))
                    return None
            try:
                data = await self.stream.receive(65536)
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                self.close_code = 1006
                return None
            self.ws.receive_data(data)
            self._pending.extend(self.ws.events())

    async def aclose(self) -> None:
        try:
            with anyio.move_on_after(0.5):
                await self.stream.send(self.ws.send(CloseConnection(code=1000)))
        except Exception:  # closing a broken connection
            pass
        await self.stream.aclose()


# The screen.


class _Reconnect(Exception):
    def __init__(self, reason: str, *, snapshot: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.snapshot = snapshot


class Screen:
    """A screen that mirrors one location's active orders from a server.

    Use ``async with Screen(["http://127.0.0.1:8080"]) as screen:``; the
    block runs the connection in the background. ``urls`` are tried in
    turn when a server is unreachable. ``on_change`` is called after every
    snapshot and event applied. ``token`` is sent as ``?token=``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        location: str = "main",
        terminal_states: Iterable[str] | None = None,
        on_change: Callable[[ScreenChange], None] | None = None,
        token: str | None = None,
        connect_timeout: float = 5.0,
        silence_timeout: float = 35.0,
        gap_grace: float = 1.0,
        backoff_base: float = 0.05,
        backoff_max: float = 5.0,
        name: str = "screen",
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("give at least one server URL")
        self.location = location
        self.mirror = Mirror(
            terminal_states if terminal_states is not None else DEFAULT_LIFECYCLE.terminal
        )
        self.on_change = on_change
        self.token = token
        self.connect_timeout = connect_timeout
        self.silence_timeout = silence_timeout
        self.gap_grace = gap_grace
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.name = name
        self.connected = False
        self.connections = 0
        self.reconnect_reasons: list[str] = []
        self.last_outcome = ""
        self.last_recovery: float | None = None
        self._url_index = 0
        self._force_snapshot = False
        self._socket: _WebSocket | None = None
        self._changed = anyio.Event()
        self._waiters = 0
        self._task_group: anyio.abc.TaskGroup | None = None
        self._listeners: list[MemoryObjectSendStream[ScreenChange]] = []
        self._session_scope: anyio.CancelScope | None = None
        self._online = anyio.Event()
        self._online.set()

    async def __aenter__(self) -> Screen:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._run, name=f"orderflow {self.name}")
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        return await self._task_group.__aexit__(*exc_info)

    @property
    def url(self) -> str:
        return self.urls[self._url_index]

    # Waiting and observing.

    async def wait_until(self, predicate: Callable[[Mirror], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(mirror)`` holds; raise ``TimeoutError`` after ``timeout`` s."""
        with anyio.fail_after(timeout):
            while not predicate(self.mirror):
                self._waiters += 1
                try:
                    await self._changed.wait()
                finally:
                    self._waiters -= 1

    async def wait_for_seq(self, seq: int, timeout: float = 10.0) -> None:
        await self.wait_until(lambda mirror: mirror.last >= seq and self.connected, timeout)

    @asynccontextmanager
    async def changes(
        self, buffer: int = 1000
    ) -> AsyncIterator[anyio.abc.ObjectReceiveStream[ScreenChange]]:
        """Receive every change as it is applied, as an async iterator."""
        send, receive = anyio.create_memory_object_stream[ScreenChange](buffer)
        self._listeners.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._listeners.remove(send)
            await send.aclose()

    def _notify(self, change: ScreenChange) -> None:
        if self.on_change is not None:
            try:
                self.on_change(change)
            except Exception:
                logger.exception(
                    "%s: on_change raised at seq %d; the screen goes on", self.name, change.seq
                )
        for listener in self._listeners:
            try:
                listener.send_nowait(change)
            except anyio.WouldBlock:
                logger.warning("%s: a changes() reader is too slow; dropping a change", self.name)
        self._wake()

    def _wake(self) -> None:
        # A waiter checks its predicate before it waits, so a change with no
        # waiter needs no wake-up (and no new Event).
        if self._waiters:
            changed, self._changed = self._changed, anyio.Event()
            changed.set()

    def _set_connected(self) -> None:
        # wait_until predicates may test ``connected``, so wake them.
        self.connected = True
        self._wake()

    def go_offline(self) -> None:
        """Drop the connection and stay away until ``go_online`` (tests and demos)."""
        self._online = anyio.Event()
        if self._session_scope is not None:
            self._session_scope.cancel()

    def go_online(self) -> None:
        """Reconnect after ``go_offline``, resuming from the mirror's last seq."""
        self._online.set()

    def drop_connection(self) -> None:
        """Drop the current connection once; the screen reconnects at once."""
        if self._session_scope is not None:
            self._session_scope.cancel()

    # The connection loop.

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._online.wait()
            started = anyio.current_time()
            try:
                with anyio.CancelScope() as self._session_scope:
                    await self._session()
                self.reconnect_reasons.append("connection dropped by the caller")
            except _Reconnect as again:
                self.reconnect_reasons.append(again.reason)
                # Only a loaded snapshot clears a snapshot request, so a
                # session that fails before its first message keeps it.
                self._force_snapshot = self._force_snapshot or again.snapshot
                logger.info("%s: reconnecting to %s: %s", self.name, self.url, again.reason)
                if not self.connected and anyio.current_time() - started < 1.0:
                    # A session closed before its first message counts as a
                    # failed connection, so the screen backs off instead of
                    # retrying in a tight loop.
                    failures += 1
            except (
                OSError,
                TimeoutError,
                anyio.BrokenResourceError,
                anyio.EndOfStream,
                ApiError,
                h11.ProtocolError,
                RemoteProtocolError,
            ) as exc:
                self.reconnect_reasons.append(f"connect failed: {_describe(exc)}")
                logger.info("%s: connection to %s failed: %r", self.name, self.url, exc)
                if anyio.current_time() - started < 1.0:
                    failures += 1
                self._url_index = (self._url_index + 1) % len(self.urls)
            finally:
                self._session_scope = None
                # Wake waiters even when the screen never connected,
                # because predicates may test reconnect_reasons.
                self.connected = False
                self._wake()
                if self._socket is not None:
                    with anyio.CancelScope(shield=True):
                        await self._socket.aclose()
                    self._socket = None
            if anyio.current_time() - started >= 1.0:
                failures = 0
            if failures:
                delay = min(self.backoff_max, self.backoff_base * 2 ** (failures - 1))
                await anyio.sleep(delay * random.uniform(0.5, 1.0))

    def _ws_url(self) -> str:
        parts = urlsplit(self.url)
        query: dict[str, str] = {"location": self.location}
        mirror = self.mirror
        if mirror.epoch is not None and not self._force_snapshot:
            query["since"] = str(mirror.last)
            query["epoch"] = mirror.epoch
        if self.token:
            query["token"] = self.token
        return f"ws://{parts.netloc}/ws?{urlencode(query)}"

    async def _session(self) -> None:
        started = time.perf_counter()
        socket = await _WebSocket.connect(self._ws_url(), self.connect_timeout)
        self._socket = socket
        self.connections += 1
        first: dict[str, Any] | None = None
        with anyio.move_on_after(self.silence_timeout):
            first = await self._receive(socket)
        if first is None:
            raise _Reconnect("the server sent no first message within the silence timeout")
        mirror = self.mirror
        consistent_at: int | None = None
        if first["type"] == "snapshot":
            mirror.load_snapshot(first)
            self._force_snapshot = False
            self.last_outcome = "snapshot"
            self.last_recovery = time.perf_counter() - started
            self._set_connected()
            self._notify(ScreenChange("snapshot", mirror.last))
        elif first["type"] == "resumed":
            if first["epoch"] != mirror.epoch or first["since"] != mirror.last:
                raise _Reconnect("the server resumed from another position", snapshot=True)
            self.last_outcome = "resumed"
            consistent_at = first["head"]
            if mirror.last >= consistent_at:
                self.last_recovery = time.perf_counter() - started
                consistent_at = None
            self._set_connected()
        else:
            raise _Reconnect(f"unexpected first message {first.get('type')!r}")

        heartbeat_deadline: float | None = None
        announced_head = 0
        while True:
            # A message that arrived whole with the ones before it needs no
            # timeout, which saves a cancel scope per event in a replay.
            message = socket.receive_buffered()
            if message is None:
                timeout = self.silence_timeout
                if heartbeat_deadline is not None:
                    timeout = max(0.0, heartbeat_deadline - anyio.current_time())
                with anyio.move_on_after(timeout):
                    message = await self._receive(socket)
            if message is None:
                if heartbeat_deadline is not None and anyio.current_time() >= heartbeat_deadline:
                    raise _Reconnect("a heartbeat announced events that never came")
                raise _Reconnect("the server was silent past the silence timeout")
            kind = message.get("type")
            if kind == "event":
                try:
                    applied = mirror.apply(message)
                except ValueError as gap:
                    raise _Reconnect(str(gap)) from None
                if applied:
                    self._notify(ScreenChange("event", mirror.last, message))
                if consistent_at is not None and mirror.last >= consistent_at:
                    self.last_recovery = time.perf_counter() - started
                    consistent_at = None
                if heartbeat_deadline is not None and mirror.last >= announced_head:
                    heartbeat_deadline = None
            elif kind == "heartbeat":
                head = message["head"]
                if head > mirror.last:
                    announced_head = max(announced_head, head)
                    if heartbeat_deadline is None:
                        # Later heartbeats keep this deadline, so a stream of
                        # them cannot postpone it forever.
                        heartbeat_deadline = anyio.current_time() + self.gap_grace
                elif head == mirror.last and message["digest"] != mirror.digest:
                    raise _Reconnect(
                        f"digest mismatch at seq {head}: server {message['digest']}, "
                        f"mirror {mirror.digest}",
                        snapshot=True,
                    )
            elif kind == "resync":
                raise _Reconnect(f"server asked to resync: {message.get('reason')}")

    async def _receive(self, socket: _WebSocket) -> dict[str, Any]:
        message = await socket.receive()
        if message is None:
            raise _Reconnect(f"connection closed ({socket.close_code})")
        return message


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status} {exc.code}: {exc}"
    return repr(exc)


# HTTP.


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(slots=True)
class _HttpConnection:
    stream: anyio.abc.ByteStream
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))


class HttpClient:
    """Keep-alive HTTP client for the orderflow API.

    Methods return decoded JSON and raise ``ApiError`` for error responses.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.netloc = parts.netloc
        self.token = token
        self.timeout = timeout
        self._idle: list[_HttpConnection] = []

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.stream.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> HttpResponse:
        """Send one request and return the response, whatever its status."""
        payload = (
            raw_body
            if raw_body is not None
            else (b"" if body is None else json.dumps(body).encode())
        )
        all_headers = [("host", self.netloc), ("content-length", str(len(payload)))]
        if body is not None or raw_body is not None:
            all_headers.append(("content-type", "application/json"))
        if self.token:
            all_headers.append(("authorization", f"Bearer {self.token}"))
        all_headers.extend((headers or {}).items())
        # A kept-alive connection may have been closed by the server just as
        # the request went out. Retrying is safe for reads and for writes
        # with an idempotency key; any other write could be applied twice.
        retryable = method in ("GET", "HEAD") or any(
            name.lower() == "idempotency-key" for name, _ in all_headers
        )
        for attempt in range(2):
            connection = self._idle.pop() if self._idle else None
            reused = connection is not None
            if connection is None:
                with anyio.fail_after(self.timeout):
                    connection = _HttpConnection(await anyio.connect_tcp(self.host, self.port))
            try:
                with anyio.fail_after(self.timeout):
                    response = await self._exchange(connection, method, path, all_headers, payload)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, h11.RemoteProtocolError):
                await connection.stream.aclose()
                if reused and attempt == 0 and retryable:
                    continue
                raise
            except BaseException:
                await connection.stream.aclose()
                raise
            if connection.h11.our_state is h11.DONE and connection.h11.their_state is h11.DONE:
                connection.h11.start_next_cycle()
                self._idle.append(connection)
            else:
                await connection.stream.aclose()
            return response
        raise OSError("unreachable")

    async def _exchange(
        self,
        connection: _HttpConnection,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        payload: bytes,
    ) -> HttpResponse:
        conn = connection.h11
        data = conn.send(h11.Request(method=method, target=path, headers=headers)) or b""
        data += conn.send(h11.Data(data=payload)) or b"" if payload else b""
        data += conn.send(h11.EndOfMessage()) or b""
        await connection.stream.send(data)
        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                received = await connection.stream.receive(65536)
                conn.receive_data(received)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return HttpResponse(status, response_headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise anyio.EndOfStream

    async def _call(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Any:
        response = await self.request(method, path, body, headers=headers)
        if response.status >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.body.decode(errors="replace")}
            raise ApiError(response.status, problem if isinstance(problem, dict) else {})
        return response.json()

    async def create_order(
        self,
        items: Sequence[Mapping[str, Any]],
        *,
        id: str | None = None,
        location: str | None = None,
        meta: Mapping[str, Any] | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"items": list(items)}
        for name, value in (("id", id), ("location", location), ("meta", meta), ("actor", actor)):
            if value is not None:
                body[name] = value
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        result: dict[str, Any] = await self._call("POST", "/orders", body, headers)
        return result

    async def transition(
        self,
        order_id: str,
        to: str,
        *,
        expected_version: int | None = None,
        reason: str | None = None,
        actor: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"to": to}
        for name, value in (
            ("expected_version", expected_version),
            ("reason", reason),
            ("actor", actor),
        ):
            if value is not None:
                body[name] = value
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        result: dict[str, Any] = await self._call(
            "POST", f"/orders/{order_id}/transitions", body, headers
        )
        return result

    async def update_order(
        self,
        order_id: str,
        *,
        items: Sequence[Mapping[str, Any]] | None = None,
        meta: Mapping[str, Any] | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Replace an order's items, meta or both (``PATCH /orders/{id}``)."""
        body: dict[str, Any] = {}
        if items is not None:
            body["items"] = list(items)
        if meta is not None:
            body["meta"] = dict(meta)
        if expected_version is not None:
            body["expected_version"] = expected_version
        headers = {"idempotency-key": idempotency_key} if idempotency_key else None
        result: dict[str, Any] = await self._call("PATCH", f"/orders/{order_id}", body, headers)
        return result

    async def get_order(self, order_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/orders/{order_id}")
        return result

    async def history(self, order_id: str) -> list[dict[str, Any]]:
        result: dict[str, Any] = await self._call("GET", f"/orders/{order_id}/events")
        return list(result["events"])

    async def active(self, location: str = "main") -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            "GET", f"/orders/active?{urlencode({'location': location})}"
        )
        return result

    async def events(
        self,
        since: int,
        *,
        location: str = "main",
        epoch: str | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        query: dict[str, Any] = {"since": since, "location": location}
        if epoch is not None:
            query["epoch"] = epoch
        if limit is not None:
            query["limit"] = limit
        result: dict[str, Any] = await self._call("GET", f"/events?{urlencode(query)}")
        return result

    async def health(self) -> dict[str, Any]:
        response = await self.request("GET", "/healthz")
        result: dict[str, Any] = response.json()
        return result
