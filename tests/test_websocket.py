"""The WebSocket feed over real sockets: snapshots, resumes, live events and closing.

The screens here are written for the tests on wsproto (``WsClient``), and
a few checks use the ``websockets`` library as a second, independent client.
A ``Tracker`` rebuilds the active orders from the messages of one screen and
enforces the client rule as it goes. Each event must be the next seq, and
each heartbeat must carry the head and the digest of the state the screen
built. The digest is computed without orderflow's own code.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import anyio
import anyio.abc
import pytest
import websockets.exceptions
import websockets.sync.client
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as WSRequest

from orderflow.client import HttpClient
from orderflow.feed import FeedOptions
from orderflow.server import ServerConfig, TokenInfo
from tests.server_support import (
    RunningServer,
    ServerProcess,
    fnv1a_digest,
    http_request,
    raw_connection,
    raw_request,
    running_server,
)

ITEMS = [{"name": "Margherita", "quantity": 1, "station": "oven"}]
TERMINAL = frozenset({"COMPLETED", "CANCELLED", "REJECTED"})
EVENT_FIELDS = {
    "seq",
    "order_id",
    "kind",
    "from",
    "to",
    "version",
    "at",
    "actor",
    "reason",
    "order",
}
# The next state of an active order. READY orders are recalled, so they stay active.
NEXT_STATE = {
    "PENDING": "CONFIRMED",
    "CONFIRMED": "PREPARING",
    "PREPARING": "READY",
    "READY": "PREPARING",
}
# Fast heartbeats and log reads, so "a long idle time" takes a fraction of a second.
FAST = ServerConfig(heartbeat_interval=0.02)
FAST_FEED = FeedOptions(poll_interval=0.02, head_check_interval=0.05)


# A test client.


class Rejected(Exception):
    """The server rejected the upgrade request with an HTTP response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"upgrade rejected with {status}: {body!r}")
        self.status = status
        self.headers = headers
        self.body = body


class Closed(Exception):
    """The WebSocket connection ended. ``code`` is 1006 when no close frame arrived."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code} {reason}")
        self.code = code
        self.reason = reason


class WsClient:
    """A screen written on wsproto, independent of ``orderflow.client``."""

    def __init__(
        self, stream: anyio.abc.SocketStream, ws: WSConnection, subprotocol: str | None
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.subprotocol = subprotocol
        self._events: list[Any] = []
        self._text: list[str] = []
        self.closed: Closed | None = None

    @classmethod
    async def handshake(
        cls,
        stream: anyio.abc.SocketStream,
        query: str,
        *,
        subprotocols: Iterable[str] = (),
        headers: Iterable[tuple[str, str]] = (),
    ) -> WsClient:
        ws = WSConnection(ConnectionType.CLIENT)
        request = WSRequest(
            host="127.0.0.1",
            target="/ws" + (f"?{query}" if query else ""),
            subprotocols=list(subprotocols),
            extra_headers=[(name.encode(), value.encode()) for name, value in headers],
        )
        await stream.send(ws.send(request))
        reject: RejectConnection | None = None
        body = b""
        with anyio.fail_after(5):
            while True:
                ws.receive_data(await stream.receive(65536))
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        client = cls(stream, ws, event.subprotocol)
                        # Frames that came in the same read as the 101.
                        client._events.extend(ws.events())
                        return client
                    if isinstance(event, RejectConnection):
                        reject = event
                        if not event.has_body:
                            raise Rejected(event.status_code, _headers(event.headers), b"")
                    elif isinstance(event, RejectData) and reject is not None:
                        body += event.data
                        if event.body_finished:
                            raise Rejected(reject.status_code, _headers(reject.headers), body)

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        """Return the next JSON message, or raise ``Closed`` when the connection ended."""
        with anyio.fail_after(timeout):
            while True:
                while self._events:
                    event = self._events.pop(0)
                    if isinstance(event, TextMessage):
                        self._text.append(event.data)
                        if event.message_finished:
                            message: dict[str, Any] = json.loads("".join(self._text))
                            self._text.clear()
                            return message
                    elif isinstance(event, Ping):
                        await self.stream.send(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self.closed = Closed(event.code, event.reason or "")
                        if self.ws.state is ConnectionState.REMOTE_CLOSING:
                            with suppress(anyio.BrokenResourceError, OSError):
                                await self.stream.send(self.ws.send(event.response()))
                        raise self.closed
                    elif isinstance(event, BytesMessage):
                        raise AssertionError("the server sent a binary message")
                if self.closed is not None:
                    raise self.closed
                try:
                    data: bytes | None = await self.stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    data = None
                self.ws.receive_data(data)
                self._events.extend(self.ws.events())

    async def close_code(self, timeout: float = 5.0) -> tuple[list[dict[str, Any]], int]:
        """Read until the connection ends and return the messages before it, and the close code."""
        messages = []
        try:
            while True:
                messages.append(await self.receive(timeout))
        except Closed as closed:
            return messages, closed.code

    async def send(self, event: TextMessage | BytesMessage) -> None:
        await self.stream.send(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def aclose(self) -> None:
        if self.ws.state is ConnectionState.OPEN:
            with suppress(anyio.BrokenResourceError, OSError):
                await self.stream.send(self.ws.send(CloseConnection(code=1000)))
        await self.stream.aclose()


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {name.decode().lower(): value.decode() for name, value in raw}


@asynccontextmanager
async def screen(
    port: int,
    query: str = "",
    *,
    subprotocols: Iterable[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    receive_buffer: int | None = None,
) -> AsyncIterator[WsClient]:
    """Connect a ``WsClient`` for the duration of the block.

    ``receive_buffer`` sets SO_RCVBUF before connecting, so a client that
    stops reading makes the server's writes block after a few kilobytes.
    """
    if receive_buffer is None:
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp("127.0.0.1", port)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await anyio.to_thread.run_sync(sock.connect, ("127.0.0.1", port))
            stream = await anyio.abc.SocketStream.from_socket(sock)
        except BaseException:
            sock.close()
            raise
    try:
        client = await WsClient.handshake(stream, query, subprotocols=subprotocols, headers=headers)
    except BaseException:
        await stream.aclose()
        raise
    try:
        yield client
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """Encode one masked client frame by hand (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = bytes([first, 0x80 | length])
    elif length < 65536:
        header = bytes([first, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([first, 0x80 | 127]) + length.to_bytes(8, "big")
    return header + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


# The state a screen builds.


@dataclass
class Tracker:
    """The active orders one screen built, with the client rule checked on every message."""

    epoch: str | None = None
    last: int = 0
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: list[str] = field(default_factory=list)
    replay_sizes: list[int] = field(default_factory=list)
    heartbeats: int = 0

    def query(self) -> str:
        if self.epoch is None:
            return ""
        return urlencode({"since": self.last, "epoch": self.epoch})

    def start(self, first: dict[str, Any]) -> None:
        """Take the first message of a connection: a snapshot or a resume."""
        self.outcomes.append(first["type"])
        if first["type"] == "snapshot":
            self.epoch = first["epoch"]
            self.last = first["head"]
            self.orders = {order["id"]: order for order in first["orders"]}
            assert first["digest"] == self.digest()
            return
        assert first["type"] == "resumed", first
        assert first["epoch"] == self.epoch
        assert first["since"] == self.last
        assert first["head"] >= self.last
        self.replay_sizes.append(first["head"] - first["since"])

    def take(self, message: dict[str, Any]) -> None:
        """Apply an event or check a heartbeat; anything else fails the test."""
        if message["type"] == "event":
            assert message["seq"] == self.last + 1, f"seq {message['seq']} after {self.last}"
            order = message["order"]
            if order["state"] in TERMINAL:
                self.orders.pop(order["id"], None)
            else:
                self.orders[order["id"]] = order
            self.last = message["seq"]
        elif message["type"] == "heartbeat":
            assert message["head"] == self.last
            assert message["digest"] == self.digest()
            self.heartbeats += 1
        else:
            raise AssertionError(f"unexpected message {message}")

    def digest(self) -> str:
        return fnv1a_digest((order_id, order["version"]) for order_id, order in self.orders.items())


# Helpers on the server side.


async def create(server: RunningServer, order_id: str | None = None, **fields: Any) -> str:
    order = await server.engine.create(fields.pop("items", ITEMS), id=order_id, **fields)
    return order.id


async def advance(server: RunningServer, order_id: str) -> None:
    order = await server.engine.get(order_id)
    await server.engine.transition(order_id, NEXT_STATE[order.state])


async def complete(server: RunningServer, order_id: str) -> None:
    for state in ("CONFIRMED", "PREPARING", "READY", "COMPLETED"):
        await server.engine.transition(order_id, state)


async def active(server: RunningServer) -> dict[str, Any]:
    async with HttpClient(server.url) as client:
        return await client.active()


async def events_after(server: RunningServer, since: int) -> list[dict[str, Any]]:
    async with HttpClient(server.url) as client:
        page = await client.events(since)
    events: list[dict[str, Any]] = page["events"]
    return events


async def receive_heartbeats(client: WsClient, tracker: Tracker, count: int) -> None:
    """Take messages until ``count`` heartbeats arrived, applying the events in between."""
    seen = tracker.heartbeats
    while tracker.heartbeats < seen + count:
        tracker.take(await client.receive())


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate()`` until it holds; raise ``TimeoutError`` after ``timeout`` s."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await anyio.sleep(0.01)
    raise TimeoutError(f"the condition did not hold within {timeout} s")


# The first message.


@pytest.mark.anyio
async def test_snapshot_first(database_url: str) -> None:
    async with running_server(database_url) as server:
        done = await create(server)
        await complete(server, done)
        kept = await create(server, "T-2")
        await advance(server, kept)
        expected = await active(server)

        async with screen(server.port) as client:
            first = await client.receive()

        assert first["type"] == "snapshot"
        assert {"type", "epoch", "head", "digest", "orders"} <= set(first)
        assert first["epoch"] == expected["epoch"]
        assert first["head"] == 7
        assert first["orders"] == expected["orders"]
        assert first["digest"] == fnv1a_digest([("T-2", 2)])


@pytest.mark.anyio
async def test_snapshot_empty(database_url: str) -> None:
    async with running_server(database_url) as server:
        async with screen(server.port, "location=patio") as client:
            first = await client.receive()

        assert first["type"] == "snapshot"
        assert first["head"] == 0
        assert first["orders"] == []
        assert first["digest"] == "0000000000000000"


@pytest.mark.anyio
async def test_live_events(database_url: str) -> None:
    async with running_server(database_url) as server:
        await create(server, "T-1")
        async with screen(server.port) as client:
            tracker = Tracker()
            tracker.start(await client.receive())

            await advance(server, "T-1")
            await create(server, "T-2", location="patio")
            await create(server, "T-3")
            first = await client.receive()
            second = await client.receive()

        expected = await events_after(server, 1)
        assert first["type"] == "event"
        assert set(first) == EVENT_FIELDS | {"type"}
        assert {key: first[key] for key in EVENT_FIELDS} == expected[0]
        assert {key: second[key] for key in EVENT_FIELDS} == expected[1]
        assert second["order_id"] == "T-3"


# Resuming.


@pytest.mark.anyio
async def test_resume_idle_at_head(database_url: str) -> None:
    async with running_server(database_url, config=FAST, feed=FAST_FEED) as server:
        for number in range(3):
            await create(server, f"T-{number}")
        tracker = Tracker()
        async with screen(server.port) as client:
            tracker.start(await client.receive())
            # Forty heartbeat periods with nothing to send, while the feed
            # keeps polling and checking the head: a long idle time.
            await receive_heartbeats(client, tracker, 40)
        feed = await server.engine.feed("main")
        assert feed.catch_ups >= 5

        async with screen(server.port, tracker.query()) as client:
            resumed = await client.receive()
            after = await client.receive()

        assert resumed == {"type": "resumed", "epoch": tracker.epoch, "since": 3, "head": 3}
        assert after["type"] == "heartbeat"
        tracker.take(after)


# With a replay buffer of 2, the 7 missed events must come from the database.
@pytest.mark.parametrize("replay_buffer", [1000, 2], ids=["memory", "database"])
@pytest.mark.anyio
async def test_resume_replays_missed(database_url: str, replay_buffer: int) -> None:
    feed = FeedOptions(poll_interval=0.02, replay_buffer=replay_buffer)
    async with running_server(database_url, config=FAST, feed=feed) as server:
        for number in range(3):
            await create(server, f"T-{number}")
        tracker = Tracker()
        async with screen(server.port) as client:
            tracker.start(await client.receive())
        for number in range(3):
            await advance(server, f"T-{number}")
            await advance(server, f"T-{number}")
        await create(server, "T-9")

        async with screen(server.port, tracker.query()) as client:
            resumed = await client.receive()
            tracker.start(resumed)
            replayed = [await client.receive() for _ in range(7)]
            for message in replayed:
                tracker.take(message)
            await receive_heartbeats(client, tracker, 1)

        assert resumed == {"type": "resumed", "epoch": tracker.epoch, "since": 3, "head": 10}
        expected = await events_after(server, 3)
        assert [{key: m[key] for key in EVENT_FIELDS} for m in replayed] == expected
        snapshot = await active(server)
        assert tracker.digest() == snapshot["digest"]
        assert tracker.orders == {order["id"]: order for order in snapshot["orders"]}


@pytest.mark.anyio
async def test_resume_at_max_replay(database_url: str) -> None:
    config = ServerConfig(max_replay=3, heartbeat_interval=0.05)
    async with running_server(database_url, config=config) as server:
        for number in range(6):
            await create(server, f"T-{number}")
        epoch = (await active(server))["epoch"]

        async with screen(server.port, f"since=3&epoch={epoch}") as client:
            first = await client.receive()
            seqs = [(await client.receive())["seq"] for _ in range(3)]

        assert first["type"] == "resumed"
        assert seqs == [4, 5, 6]


def snapshot_queries(head: int, epoch: str) -> dict[str, str]:
    """Return the queries that must start with a snapshot, by case name."""
    return {
        "no-since": "",
        "no-epoch": f"since={head}",
        "empty-epoch": f"since={head}&epoch=",
        "unknown-epoch": f"since={head}&epoch=00000000deadbeef",
        "above-head": f"since={head + 1}&epoch={epoch}",
        "far-above-head": f"since={head + 1000}&epoch={epoch}",
        "beyond-max-replay": f"since={head - 4}&epoch={epoch}",
    }


@pytest.mark.parametrize("case", list(snapshot_queries(0, "")))
@pytest.mark.anyio
async def test_snapshot_outcomes(database_url: str, case: str) -> None:
    async with running_server(database_url, config=ServerConfig(max_replay=3)) as server:
        for number in range(6):
            await create(server, f"T-{number}")
        expected = await active(server)
        query = snapshot_queries(6, expected["epoch"])[case]

        async with screen(server.port, query) as client:
            first = await client.receive()

        assert first["type"] == "snapshot"
        assert first["head"] == 6
        assert first["epoch"] == expected["epoch"]
        assert first["digest"] == expected["digest"]


@pytest.mark.parametrize("replay_buffer", [1000, 2], ids=["memory", "database"])
@pytest.mark.anyio
async def test_below_retained_range(database_url: str, replay_buffer: int) -> None:
    feed = FeedOptions(replay_buffer=replay_buffer)
    async with running_server(database_url, feed=feed) as server:
        # Started first, the feed keeps every event of this test in memory
        # unless its replay buffer is small.
        await server.engine.feed("main")
        done = await create(server)
        await complete(server, done)
        await create(server, "T-6")
        epoch = (await active(server))["epoch"]
        assert await server.engine.prune("main", older_than=timedelta(0)) == 5

        async with screen(server.port, f"since=2&epoch={epoch}") as client:
            below = await client.receive()
        async with screen(server.port, f"since=5&epoch={epoch}") as client:
            oldest = await client.receive()
            replayed = await client.receive()

        assert below["type"] == "snapshot"
        assert [order["id"] for order in below["orders"]] == ["T-6"]
        assert oldest["type"] == "resumed"
        assert replayed["seq"] == 6


@pytest.mark.anyio
async def test_resume_under_writer(database_url: str) -> None:
    # A writer keeps changing orders while four screens connect, read a
    # little, drop the connection and resume, some after staying away long
    # enough that the feed's replay buffer no longer has their events.
    rng = random.Random(20240601)
    feed = FeedOptions(poll_interval=0.02, replay_buffer=16)
    config = ServerConfig(heartbeat_interval=0.02)
    steps = 240
    async with running_server(database_url, config=config, feed=feed) as server:
        order_ids = [await create(server, f"W-{number}") for number in range(6)]
        progress = {"steps": 0, "created": 0, "done": False}

        async def write() -> None:
            for _ in range(steps):
                index = rng.randrange(len(order_ids))
                order = await server.engine.get(order_ids[index])
                if order.state == "READY" and rng.random() < 0.3:
                    await server.engine.transition(order.id, "COMPLETED")
                    progress["created"] += 1
                    order_ids[index] = await create(server, f"N-{progress['created']}")
                else:
                    await server.engine.transition(order.id, NEXT_STATE[order.state])
                progress["steps"] += 1
                if rng.random() < 0.1:
                    await anyio.sleep(0.02)
            progress["done"] = True

        async def watch(tracker: Tracker, seed: int) -> None:
            own = random.Random(seed)
            while True:
                async with screen(server.port, tracker.query()) as client:
                    tracker.start(await client.receive())
                    for _ in range(own.randint(1, 25)):
                        tracker.take(await client.receive())
                if progress["done"]:
                    return
                if own.random() < 0.3:
                    # Stay away while the writer moves well past the buffer.
                    target = progress["steps"] + 20
                    await wait_for(
                        lambda target=target: progress["done"] or progress["steps"] >= target
                    )

        trackers = [Tracker() for _ in range(4)]
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(write)
            for number, tracker in enumerate(trackers):
                task_group.start_soon(watch, tracker, number)

        final = await active(server)
        assert final["head"] == 6 + steps + progress["created"]
        for tracker in trackers:
            # Catch up to the final head, then compare with the database.
            async with screen(server.port, tracker.query()) as client:
                tracker.start(await client.receive())
                while tracker.last < final["head"]:
                    tracker.take(await client.receive())
                await receive_heartbeats(client, tracker, 1)

            assert tracker.outcomes[0] == "snapshot"
            assert set(tracker.outcomes[1:]) == {"resumed"}
            assert tracker.last == final["head"]
            assert tracker.digest() == final["digest"]
            assert tracker.orders == {order["id"]: order for order in final["orders"]}
        # Some resumes were further behind than the replay buffer holds, so
        # their events came from the database.
        assert max(size for t in trackers for size in t.replay_sizes) > feed.replay_buffer


@pytest.mark.anyio
async def test_heartbeat_matches_state(database_url: str) -> None:
    async with running_server(database_url, config=FAST) as server:
        await create(server, "T-1")
        async with screen(server.port) as client:
            tracker = Tracker()
            tracker.start(await client.receive())
            await advance(server, "T-1")
            await create(server, "T-2")
            await receive_heartbeats(client, tracker, 2)

        assert tracker.last == 3
        assert tracker.digest() == fnv1a_digest([("T-1", 2), ("T-2", 1)])


# Screens that fall behind.


def big_items() -> list[dict[str, Any]]:
    """Return items that make every event of their order about 100 KB long."""
    return [{"name": f"dish {n}", "quantity": 1, "notes": "n" * 1000} for n in range(100)]


@pytest.mark.anyio
async def test_slow_consumer_resync(sqlite_url: str) -> None:
    feed = FeedOptions(subscriber_queue=2)
    async with running_server(sqlite_url, feed=feed) as server:
        await create(server, "BIG", items=big_items())
        location_feed = await server.engine.feed("main")

        async with screen(server.port, receive_buffer=4096) as client:
            tracker = Tracker()
            tracker.start(await client.receive())
            # The screen stops reading. Its socket fills up, the server's
            # writes block, and the feed queues events for it until the
            # queue overflows.
            for _ in range(300):
                await advance(server, "BIG")
                if location_feed.subscriber_count == 0:
                    break
            assert location_feed.subscriber_count == 0
            head = location_feed.head

            messages, code = await client.close_code(timeout=10)

        events = [message for message in messages if message["type"] == "event"]
        for event in events:
            tracker.take(event)
        assert messages[-1] == {"type": "resync", "reason": "slow_consumer"}
        assert code == 4000
        assert len(events) == len(messages) - 1
        assert tracker.last < head

        # The screen resumes from its last seq and gets the rest.
        async with screen(server.port, tracker.query()) as client:
            tracker.start(await client.receive())
            while tracker.last < head:
                tracker.take(await client.receive(timeout=10))
        assert tracker.outcomes == ["snapshot", "resumed"]


@pytest.mark.anyio
async def test_stalled_screen_dropped(sqlite_url: str) -> None:
    config = ServerConfig(send_timeout=0.3)
    async with running_server(sqlite_url, config=config) as server:
        await create(server, "BIG", items=big_items())

        async with screen(server.port, receive_buffer=4096) as client:
            await client.receive()
            # The screen never reads again: once a write has been blocked
            # for send_timeout, the server drops the connection.
            for _ in range(300):
                await advance(server, "BIG")
                if not server.server.sessions:
                    break
            await wait_for(lambda: not server.server.sessions)

            messages, code = await client.close_code(timeout=10)

        assert code == 1006
        assert all(message["type"] == "event" for message in messages)


# Protocol details.


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["orderflow.v1"], "orderflow.v1"), (["chat", "orderflow.v1"], "orderflow.v1"), ([], None)],
    ids=["only", "among-others", "none"],
)
@pytest.mark.anyio
async def test_subprotocol(sqlite_url: str, offered: list[str], chosen: str | None) -> None:
    async with running_server(sqlite_url) as server:
        async with screen(server.port, subprotocols=offered) as client:
            first = await client.receive()

        assert client.subprotocol == chosen
        assert first["type"] == "snapshot"


@pytest.mark.anyio
async def test_independent_client(sqlite_url: str) -> None:
    # The websockets library, in a worker thread, as a second client.
    async with running_server(sqlite_url) as server:
        await create(server, "T-1")

        def connect() -> tuple[str | None, dict[str, Any]]:
            with websockets.sync.client.connect(
                f"ws://127.0.0.1:{server.port}/ws?location=main",
                subprotocols=[websockets.Subprotocol("orderflow.v1")],
                compression=None,
                proxy=None,
                open_timeout=5,
            ) as ws:
                first = json.loads(ws.recv(timeout=5))
                return ws.subprotocol, first

        subprotocol, first = await anyio.to_thread.run_sync(connect)

        assert subprotocol == "orderflow.v1"
        assert first["type"] == "snapshot"
        assert [order["id"] for order in first["orders"]] == ["T-1"]


@pytest.mark.anyio
async def test_binary_closes_1003(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        async with screen(server.port) as client:
            await client.receive()

            await client.send(BytesMessage(data=b"\x00\x01"))
            _, code = await client.close_code()

        assert code == 1003


@pytest.mark.anyio
async def test_invalid_utf8_closes_1007(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        async with screen(server.port) as client:
            await client.receive()

            await client.send_raw(client_frame(0x1, b'{"note": "\xff\xfe"}'))
            _, code = await client.close_code()

        assert code == 1007


@pytest.mark.anyio
async def test_message_too_big_1009(sqlite_url: str) -> None:
    config = ServerConfig(max_ws_message_bytes=1024)
    async with running_server(sqlite_url, config=config) as server:
        async with screen(server.port) as client:
            await client.receive()

            await client.send(TextMessage(data="x" * 2000))
            _, code = await client.close_code()

        assert code == 1009


@pytest.mark.anyio
async def test_fragments_too_big_1009(sqlite_url: str) -> None:
    config = ServerConfig(max_ws_message_bytes=1024)
    async with running_server(sqlite_url, config=config) as server:
        async with screen(server.port) as client:
            await client.receive()

            # Two frames of 600 bytes each: one message of 1200 bytes.
            await client.send_raw(client_frame(0x1, b"x" * 600, fin=False))
            await client.send_raw(client_frame(0x0, b"x" * 600))
            _, code = await client.close_code()

        assert code == 1009


@pytest.mark.anyio
async def test_small_message_ignored(sqlite_url: str) -> None:
    config = ServerConfig(max_ws_message_bytes=1024, heartbeat_interval=0.05)
    async with running_server(sqlite_url, config=config) as server:
        async with screen(server.port) as client:
            tracker = Tracker()
            tracker.start(await client.receive())

            for _ in range(3):
                await client.send(TextMessage(data="x" * 1000))
            await create(server, "T-1")
            await receive_heartbeats(client, tracker, 1)

        assert tracker.last == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=-1", "since"),
        ("since=abc", "since"),
        ("since=1.5", "since"),
        ("since=%C2%B2", "since"),
        ("since=" + "9" * 30, "since"),
        ("location=a%2Fb", "location"),
        ("location=", "location"),
        ("location=..&since=1", "location"),
    ],
)
@pytest.mark.anyio
async def test_bad_query_rejected(sqlite_url: str, query: str, field: str) -> None:
    async with running_server(sqlite_url) as server:
        with pytest.raises(Rejected) as rejected:
            async with screen(server.port, query):
                pass

        assert rejected.value.status == 422
        assert rejected.value.headers["content-type"] == "application/problem+json"
        problem = json.loads(rejected.value.body)
        assert problem["code"] == "invalid_request"
        assert problem["field"] == field
        assert not server.server.sessions


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")], 400),
        (
            [("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "8")],
            426,
        ),
        ([("Sec-WebSocket-Version", "13")], 400),
    ],
    ids=["no-version", "old-version", "no-key"],
)
@pytest.mark.anyio
async def test_bad_handshake(sqlite_url: str, headers: list[tuple[str, str]], status: int) -> None:
    async with running_server(sqlite_url) as server:
        upgrade = [("Connection", "Upgrade"), ("Upgrade", "websocket"), *headers]

        async with raw_connection(server.port) as connection:
            await connection.send(http_request("GET", "/ws", None, upgrade))
            response = await connection.read_response()
            await connection.wait_closed()

        assert response.status == status
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_request"
        if status == 426:
            assert response.headers["sec-websocket-version"] == "13"
        healthz = await raw_request(server.port, http_request("GET", "/healthz"))
        assert healthz.status == 200


# Authentication.

TOKENS = {"kitchen-secret": TokenInfo("kds-1", frozenset({"kitchen"}))}


@pytest.mark.parametrize(
    ("query", "headers"),
    [("token=kitchen-secret", []), ("", [("Authorization", "Bearer kitchen-secret")])],
    ids=["query", "header"],
)
@pytest.mark.anyio
async def test_token_accepted(sqlite_url: str, query: str, headers: list[tuple[str, str]]) -> None:
    async with running_server(sqlite_url, config=ServerConfig(tokens=TOKENS)) as server:
        async with screen(server.port, query, headers=headers) as client:
            first = await client.receive()

        assert first["type"] == "snapshot"


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", []),
        ("token=wrong", []),
        ("token=", []),
        ("", [("Authorization", "Bearer wrong")]),
    ],
    ids=["none", "wrong-query", "empty-query", "wrong-header"],
)
@pytest.mark.anyio
async def test_token_required(sqlite_url: str, query: str, headers: list[tuple[str, str]]) -> None:
    async with running_server(sqlite_url, config=ServerConfig(tokens=TOKENS)) as server:
        with pytest.raises(Rejected) as rejected:
            async with screen(server.port, query, headers=headers):
                pass

        assert rejected.value.status == 401
        assert json.loads(rejected.value.body)["code"] == "unauthorized"


# Shutdown.


@pytest.mark.anyio
async def test_shutdown_resyncs(database_url: str) -> None:
    async with running_server(database_url) as server:
        await create(server, "T-1")
        results: list[tuple[list[dict[str, Any]], int]] = []

        async def watch(location: str, ready: anyio.Event) -> None:
            async with screen(server.port, f"location={location}") as client:
                await client.receive()
                ready.set()
                results.append(await client.close_code())

        async with anyio.create_task_group() as task_group:
            for location in ("main", "main", "patio"):
                ready = anyio.Event()
                task_group.start_soon(watch, location, ready)
                await ready.wait()
            server.server.shutdown()

        assert len(results) == 3
        for messages, code in results:
            assert messages == [{"type": "resync", "reason": "shutdown"}]
            assert code == 4000


# The command line server.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_cli_signal(database_url: str, signum: signal.Signals) -> None:
    with ServerProcess(database_url) as process:
        port = int(process.url.rsplit(":", 1)[1])
        assert process.url == f"http://127.0.0.1:{port}"
        api = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        api.request("GET", "/healthz")
        assert api.getresponse().status == 200
        api.close()

        with websockets.sync.client.connect(
            f"ws://127.0.0.1:{port}/ws", compression=None, proxy=None, open_timeout=10
        ) as ws:
            first = json.loads(ws.recv(timeout=10))
            process.process.send_signal(signum)
            resync = json.loads(ws.recv(timeout=10))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                ws.recv(timeout=10)

        code = process.process.wait(timeout=15)

    assert first["type"] == "snapshot"
    assert resync == {"type": "resync", "reason": "shutdown"}
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4000
    assert code == 0


@pytest.mark.anyio
async def test_heartbeat_under_steady_traffic(database_url: str) -> None:
    """Heartbeats keep coming while events flow, not only when the location is idle."""
    config = ServerConfig(heartbeat_interval=0.1)
    async with running_server(database_url, config=config) as server:
        order = await server.engine.create([{"name": "Caña", "quantity": 1}])
        await server.engine.transition(order.id, "CONFIRMED")
        await server.engine.transition(order.id, "PREPARING")
        heartbeats = 0
        events = 0
        async with screen(server.port) as client:
            first = await client.receive()
            assert first["type"] == "snapshot"

            async def write() -> None:
                for index in range(40):
                    target = "READY" if index % 2 == 0 else "PREPARING"
                    await server.engine.transition(order.id, target)
                    await anyio.sleep(0.02)

            async with anyio.create_task_group() as group:
                group.start_soon(write)
                with anyio.fail_after(20):
                    while events < 40:
                        message = await client.receive()
                        if message["type"] == "event":
                            events += 1
                        elif message["type"] == "heartbeat":
                            heartbeats += 1
    assert heartbeats >= 3
