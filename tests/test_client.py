"""The Python screen client: the mirror, the client rule and the HTTP client.

Three layers:

- ``Mirror`` on its own, with no I/O, including Hypothesis sequences of
  events, duplicates and gaps;
- ``Screen`` against a scripted WebSocket server that this file runs on
  127.0.0.1, which sends crafted messages and records each connection's
  query string, so every branch of the client rule can be forced;
- ``Screen`` and ``HttpClient`` against a real orderflow server.
"""

from __future__ import annotations

import itertools
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from anyio.streams.memory import MemoryObjectReceiveStream
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import Request as WSRequest

import orderflow.client
from orderflow.broker import MemoryBroker
from orderflow.client import ApiError, HttpClient, Mirror, Screen, ScreenChange
from orderflow.digest import EMPTY_DIGEST, digest_of
from orderflow.engine import Transaction
from orderflow.feed import FeedOptions
from orderflow.lifecycle import DEFAULT_LIFECYCLE
from orderflow.models import Event
from orderflow.server import ServerConfig
from orderflow.server.config import TokenInfo
from tests.server_support import running_server

pytestmark = pytest.mark.anyio

EPOCH = "epoch-scripted"
ITEMS = [{"name": "Margherita", "quantity": 2}]
WAIT = 5.0


# Wire messages, built the way the server writes them.


def wire_order(order_id: str, state: str = "PENDING", version: int = 1) -> dict[str, Any]:
    return {
        "id": order_id,
        "location": "main",
        "state": state,
        "version": version,
        "items": [{"name": "Margherita", "quantity": 1}],
        "meta": {},
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
    }


def wire_event(seq: int, order: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "event",
        "seq": seq,
        "order_id": order["id"],
        "kind": "order.created" if order["version"] == 1 else "order.transitioned",
        "from": None,
        "to": order["state"],
        "version": order["version"],
        "at": "2024-05-01T12:00:00Z",
        "actor": None,
        "reason": None,
        "order": dict(order),
    }


def wire_digest(orders: Sequence[Mapping[str, Any]]) -> str:
    return digest_of((order["id"], order["version"]) for order in orders)


def snapshot_message(
    head: int, orders: Sequence[Mapping[str, Any]], epoch: str = EPOCH
) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "epoch": epoch,
        "head": head,
        "digest": wire_digest(orders),
        "orders": [dict(order) for order in orders],
    }


def resumed_message(since: int, head: int, epoch: str = EPOCH) -> dict[str, Any]:
    return {"type": "resumed", "epoch": epoch, "since": since, "head": head}


def heartbeat_message(head: int, digest: str) -> dict[str, Any]:
    return {"type": "heartbeat", "head": head, "digest": digest}


# The scripted WebSocket server.


class ScriptedPeer:
    """One screen connection on the scripted server's side, after the upgrade request."""

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        ws: WSConnection,
        index: int,
        query: dict[str, str],
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.index = index
        self.query = query

    def _encode(self, messages: Sequence[Mapping[str, Any]]) -> bytes:
        return b"".join(self.ws.send(TextMessage(json.dumps(message))) for message in messages)

    async def accept(self, *messages: Mapping[str, Any]) -> None:
        """Send the 101 response and ``messages`` in one write."""
        data = self.ws.send(AcceptConnection(subprotocol="orderflow.v1"))
        await self.stream.send(data + self._encode(messages))

    async def reject(self, status: int, problem: Mapping[str, Any]) -> None:
        body = json.dumps(problem).encode()
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
        ]
        data = self.ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self.ws.send(RejectData(data=body, body_finished=True))
        await self.stream.send(data)

    async def send(self, *messages: Mapping[str, Any]) -> None:
        await self.stream.send(self._encode(messages))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def send_text(self, text: str) -> None:
        await self.stream.send(self.ws.send(TextMessage(text)))

    async def close(self, code: int, reason: str = "") -> None:
        await self.stream.send(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def wait_closed(self) -> None:
        """Read until the screen closes the connection, and reply to its close frame."""
        while True:
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, CloseConnection):
                    if self.ws.state is ConnectionState.REMOTE_CLOSING:
                        await self.stream.send(self.ws.send(event.response()))
                    return


Script = Callable[[ScriptedPeer], Awaitable[None]]


class ScriptedServer:
    """A WebSocket server on 127.0.0.1 that runs ``script`` for every connection.

    ``attempts`` contains the time (``anyio.current_time()``) of every accepted
    TCP connection and ``queries`` the query string of every upgrade request.
    A script that returns without accepting makes the server close the
    connection.
    """

    def __init__(self, url: str, script: Script) -> None:
        self.url = url
        self.script = script
        self.attempts: list[float] = []
        self.queries: list[dict[str, str]] = []
        self._requests = 0
        self._arrived = anyio.Event()

    async def wait_for_attempts(self, count: int, timeout: float = WAIT) -> None:
        """Wait until ``count`` connections sent their upgrade request (or closed)."""
        with anyio.fail_after(timeout):
            while self._requests < count:
                await self._arrived.wait()

    def _request_read(self) -> None:
        self._requests += 1
        arrived, self._arrived = self._arrived, anyio.Event()
        arrived.set()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        index = len(self.attempts)
        self.attempts.append(anyio.current_time())
        async with stream:
            ws = WSConnection(ConnectionType.SERVER)
            try:
                try:
                    request = await self._read_request(stream, ws)
                    if request is not None:
                        query = dict(parse_qsl(urlsplit(request.target).query))
                        self.queries.append(query)
                finally:
                    self._request_read()
                if request is not None:
                    await self.script(ScriptedPeer(stream, ws, index, query))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                pass  # the screen left first

    @staticmethod
    async def _read_request(stream: anyio.abc.SocketStream, ws: WSConnection) -> WSRequest | None:
        while True:
            try:
                data = await stream.receive(65536)
            except anyio.EndOfStream:
                return None
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, WSRequest):
                    return event


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[ScriptedServer]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as task_group:
        port = listener.extra(SocketAttribute.local_port)
        server = ScriptedServer(f"http://127.0.0.1:{port}", script)
        task_group.start_soon(listener.serve, server.handle)
        try:
            yield server
        finally:
            task_group.cancel_scope.cancel()


@contextmanager
def refusing_url() -> Iterator[str]:
    """Yield a loopback URL whose port is bound but not listening, so connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


# Mirror: pure state, no I/O.


def test_mirror_loads_snapshot() -> None:
    orders = [wire_order("a", "CONFIRMED", 2), wire_order("b")]
    mirror = Mirror()

    mirror.load_snapshot(snapshot_message(7, orders))

    assert mirror.epoch == EPOCH
    assert mirror.last == 7
    assert mirror.states() == {"a": ("CONFIRMED", 2), "b": ("PENDING", 1)}
    assert mirror.digest == wire_digest(orders)


def test_mirror_snapshot_replaces_state() -> None:
    mirror = Mirror()
    mirror.load_snapshot(snapshot_message(3, [wire_order("a"), wire_order("b")]))

    mirror.load_snapshot(snapshot_message(9, [wire_order("c", "READY", 4)], epoch="other"))

    assert mirror.epoch == "other"
    assert mirror.last == 9
    assert mirror.states() == {"c": ("READY", 4)}
    assert mirror.digest == digest_of([("c", 4)])


def test_mirror_empty_digest() -> None:
    assert Mirror().digest == EMPTY_DIGEST


def test_mirror_applies_in_order() -> None:
    mirror = Mirror()
    mirror.load_snapshot(snapshot_message(0, []))

    assert mirror.apply(wire_event(1, wire_order("a")))
    assert mirror.apply(wire_event(2, wire_order("a", "CONFIRMED", 2)))
    assert mirror.apply(wire_event(3, wire_order("b")))

    assert mirror.last == 3
    assert mirror.states() == {"a": ("CONFIRMED", 2), "b": ("PENDING", 1)}


def test_mirror_ignores_duplicates() -> None:
    mirror = Mirror()
    mirror.load_snapshot(snapshot_message(5, [wire_order("a", "CONFIRMED", 2)]))

    assert not mirror.apply(wire_event(5, wire_order("a", "CANCELLED", 3)))
    assert not mirror.apply(wire_event(2, wire_order("z")))

    assert mirror.last == 5
    assert mirror.states() == {"a": ("CONFIRMED", 2)}


def test_mirror_gap_raises() -> None:
    mirror = Mirror()
    mirror.load_snapshot(snapshot_message(5, [wire_order("a")]))
    digest = mirror.digest

    with pytest.raises(ValueError, match="gap"):
        mirror.apply(wire_event(7, wire_order("b")))

    assert mirror.last == 5
    assert mirror.states() == {"a": ("PENDING", 1)}
    assert mirror.digest == digest


@pytest.mark.parametrize("terminal", sorted(DEFAULT_LIFECYCLE.terminal))
def test_mirror_terminal_removes(terminal: str) -> None:
    mirror = Mirror()
    mirror.load_snapshot(snapshot_message(1, [wire_order("a"), wire_order("b")]))

    assert mirror.apply(wire_event(2, wire_order("a", terminal, 2)))

    assert mirror.states() == {"b": ("PENDING", 1)}
    assert mirror.digest == digest_of([("b", 1)])


def test_mirror_terminal_unknown_order() -> None:
    # An order created and ended before the snapshot the mirror started from.
    mirror = Mirror()
    mirror.load_snapshot(snapshot_message(4, []))

    assert mirror.apply(wire_event(5, wire_order("gone", "COMPLETED", 5)))

    assert mirror.last == 5
    assert mirror.orders == {}
    assert mirror.digest == EMPTY_DIGEST


def test_mirror_custom_terminal_states() -> None:
    mirror = Mirror(terminal_states={"SERVED"})
    mirror.load_snapshot(snapshot_message(0, []))

    mirror.apply(wire_event(1, wire_order("a", "COMPLETED", 1)))
    mirror.apply(wire_event(2, wire_order("b", "SERVED", 1)))

    assert mirror.states() == {"a": ("COMPLETED", 1)}


ORDER_IDS = ["a", "b", "c", "d", "e"]
STATES = sorted(DEFAULT_LIFECYCLE.states)
ACTIVE_STATES = [state for state in STATES if state not in DEFAULT_LIFECYCLE.terminal]


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Draw a snapshot and the events that follow it, with versions that count up per order."""
    head = draw(st.integers(min_value=0, max_value=50))
    versions: dict[str, int] = {}
    start: list[dict[str, Any]] = []
    for order_id in draw(st.lists(st.sampled_from(ORDER_IDS), unique=True)):
        versions[order_id] = draw(st.integers(min_value=1, max_value=6))
        state = draw(st.sampled_from(ACTIVE_STATES))
        start.append(wire_order(order_id, state, versions[order_id]))

    events: list[dict[str, Any]] = []
    changes = draw(st.lists(st.tuples(st.sampled_from(ORDER_IDS), st.sampled_from(STATES))))
    for offset, (order_id, state) in enumerate(changes, start=1):
        versions[order_id] = versions.get(order_id, 0) + 1
        events.append(wire_event(head + offset, wire_order(order_id, state, versions[order_id])))
    return snapshot_message(head, start), events


def expected_states(
    snapshot: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> dict[str, tuple[str, int]]:
    """The model: active orders after the snapshot and ``events``, built from scratch."""
    states = {order["id"]: (order["state"], order["version"]) for order in snapshot["orders"]}
    for event in events:
        order = event["order"]
        if order["state"] in DEFAULT_LIFECYCLE.terminal:
            states.pop(order["id"], None)
        else:
            states[order["id"]] = (order["state"], order["version"])
    return states


def recomputed_digest(mirror: Mirror) -> str:
    return digest_of((order_id, order["version"]) for order_id, order in mirror.orders.items())


@given(histories())
def test_mirror_digest_incremental(history: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    snapshot, events = history
    mirror = Mirror()
    mirror.load_snapshot(snapshot)
    assert mirror.digest == recomputed_digest(mirror)

    for applied, event in enumerate(events, start=1):
        assert mirror.apply(event)
        assert mirror.digest == recomputed_digest(mirror)
        assert mirror.states() == expected_states(snapshot, events[:applied])


@given(histories(), st.data())
def test_mirror_delivery_order(
    history: tuple[dict[str, Any], list[dict[str, Any]]], data: st.DataObject
) -> None:
    snapshot, events = history
    if not events:
        return
    # Deliver events in any order, with repeats: the mirror takes only the next one.
    deliveries = data.draw(st.lists(st.sampled_from(events), max_size=3 * len(events)))
    mirror = Mirror()
    mirror.load_snapshot(snapshot)
    last = snapshot["head"]

    for event in deliveries:
        before = (mirror.last, mirror.states(), mirror.digest)
        if event["seq"] <= last:
            assert not mirror.apply(event)
            assert (mirror.last, mirror.states(), mirror.digest) == before
        elif event["seq"] == last + 1:
            assert mirror.apply(event)
            last += 1
        else:
            with pytest.raises(ValueError, match="gap"):
                mirror.apply(event)
            assert (mirror.last, mirror.states(), mirror.digest) == before
        assert mirror.last == last
        assert mirror.digest == recomputed_digest(mirror)
        assert mirror.states() == expected_states(snapshot, events[: last - snapshot["head"]])


# The client rule against the scripted server.


async def test_screen_gap_resumes_from_last(anyio_backend: str) -> None:
    first = [wire_order("a")]

    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(5, first))
            await peer.send(
                wire_event(6, wire_order("b")), wire_event(8, wire_order("a", "CONFIRMED", 2))
            )
        else:
            await peer.accept(
                resumed_message(since=6, head=8),
                wire_event(7, wire_order("c")),
                wire_event(8, wire_order("a", "CONFIRMED", 2)),
            )
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="gap") as screen:
        await screen.wait_for_seq(8, timeout=WAIT)

    assert "since" not in server.queries[0]
    assert server.queries[1]["since"] == "6"
    assert server.queries[1]["epoch"] == EPOCH
    assert server.queries[1]["location"] == "main"
    assert "gap" in screen.reconnect_reasons[0]
    assert screen.last_outcome == "resumed"
    assert screen.mirror.states() == {
        "a": ("CONFIRMED", 2),
        "b": ("PENDING", 1),
        "c": ("PENDING", 1),
    }


async def test_screen_ignores_duplicates(anyio_backend: str) -> None:
    orders = [wire_order("a")]

    async def script(peer: ScriptedPeer) -> None:
        await peer.accept(snapshot_message(3, orders))
        event_4 = wire_event(4, wire_order("b"))
        await peer.send(
            event_4,
            event_4,
            wire_event(2, wire_order("old")),
            heartbeat_message(4, wire_digest([*orders, wire_order("b")])),
            wire_event(5, wire_order("c")),
        )
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="dup") as screen:
        # Messages are handled in order, so by the time event 5 is applied
        # any reconnect caused by the duplicates would already have happened.
        await screen.wait_for_seq(5, timeout=WAIT)

    assert len(server.attempts) == 1
    assert screen.reconnect_reasons == []
    assert screen.mirror.states() == {
        "a": ("PENDING", 1),
        "b": ("PENDING", 1),
        "c": ("PENDING", 1),
    }


async def test_screen_digest_mismatch_takes_snapshot(anyio_backend: str) -> None:
    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(3, [wire_order("a"), wire_order("b", "READY", 2)]))
            await peer.send(heartbeat_message(3, "00000000000000ff"))
        else:
            await peer.accept(snapshot_message(3, [wire_order("b", "READY", 3)]))
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="digest") as screen:
        await server.wait_for_attempts(2)
        await screen.wait_until(lambda mirror: "a" not in mirror.orders, timeout=WAIT)

    assert "since" not in server.queries[1]
    assert "epoch" not in server.queries[1]
    assert "digest mismatch" in screen.reconnect_reasons[0]
    assert screen.last_outcome == "snapshot"
    assert screen.mirror.states() == {"b": ("READY", 3)}


async def test_screen_snapshot_request_survives_failure(anyio_backend: str) -> None:
    # After a digest mismatch the next session must be a snapshot, even if
    # the first attempt at it ends before its first message.
    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(3, [wire_order("a")]))
            await peer.send(heartbeat_message(3, "00000000000000ff"))
        elif peer.index == 1:
            await peer.accept()
            await peer.close(1011, "try again")
            return
        else:
            await peer.accept(snapshot_message(3, [wire_order("a", "READY", 4)]))
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="snap") as screen:
        await server.wait_for_attempts(3)
        await screen.wait_until(lambda mirror: mirror.states() == {"a": ("READY", 4)}, WAIT)

    assert "since" not in server.queries[1]
    assert "since" not in server.queries[2]


async def test_screen_heartbeat_ahead_resumes(anyio_backend: str) -> None:
    grace = 0.2
    sent_at: list[float] = []

    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(3, [wire_order("a")]))
            # Taken before sending, so the screen cannot have read it earlier.
            sent_at.append(anyio.current_time())
            await peer.send(heartbeat_message(5, "0000000000000001"))
        else:
            await peer.accept(resumed_message(since=3, head=3))
        await peer.wait_closed()

    async with (
        scripted_server(script) as server,
        Screen(server.url, gap_grace=grace, name="ahead") as screen,
    ):
        await server.wait_for_attempts(2)

    assert server.queries[1]["since"] == "3"
    assert server.queries[1]["epoch"] == EPOCH
    assert server.attempts[1] - sent_at[0] >= grace
    assert "heartbeat" in screen.reconnect_reasons[0]


async def test_screen_heartbeat_then_event_stays(anyio_backend: str) -> None:
    grace = 0.2

    async def script(peer: ScriptedPeer) -> None:
        await peer.accept(snapshot_message(3, [wire_order("a")]))
        await peer.send(heartbeat_message(4, "0000000000000001"))
        await anyio.sleep(grace / 4)
        await peer.send(wire_event(4, wire_order("b")))
        # Stay quiet past the grace period, then send one more event.
        await anyio.sleep(grace * 3)
        await peer.send(wire_event(5, wire_order("c")))
        await peer.wait_closed()

    async with (
        scripted_server(script) as server,
        Screen(server.url, gap_grace=grace, name="in-time") as screen,
    ):
        await screen.wait_for_seq(5, timeout=WAIT)

    assert len(server.attempts) == 1
    assert screen.reconnect_reasons == []


async def test_screen_repeated_heartbeats_resume(anyio_backend: str) -> None:
    # Heartbeats that keep announcing a head the screen never gets must not
    # keep postponing the deadline of the first one.
    grace = 0.3

    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(3, [wire_order("a")]))
            for _ in range(100):
                await peer.send(heartbeat_message(5, "0000000000000001"))
                await anyio.sleep(grace / 3)
        else:
            await peer.accept(resumed_message(since=3, head=3))
            await peer.wait_closed()

    async with (
        scripted_server(script) as server,
        Screen(server.url, gap_grace=grace, name="heartbeats") as screen,
    ):
        await server.wait_for_attempts(2, timeout=10 * grace)

    assert server.queries[1]["since"] == "3"
    assert "heartbeat" in screen.reconnect_reasons[0]


async def test_screen_resync_resumes(anyio_backend: str) -> None:
    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(2, [wire_order("a")]))
            await peer.send({"type": "resync", "reason": "slow_consumer"})
            await peer.close(4000, "slow_consumer")
        else:
            await peer.accept(resumed_message(since=2, head=2))
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="resync") as screen:
        await server.wait_for_attempts(2)
        await screen.wait_until(lambda mirror: screen.last_outcome == "resumed", WAIT)

    assert server.queries[1]["since"] == "2"
    assert server.queries[1]["epoch"] == EPOCH
    assert "slow_consumer" in screen.reconnect_reasons[0]
    assert screen.mirror.states() == {"a": ("PENDING", 1)}


async def test_screen_silence_reconnects(anyio_backend: str) -> None:
    silence = 0.3

    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(4, [wire_order("a")]))
        else:
            await peer.accept(resumed_message(since=4, head=4))
        await peer.wait_closed()

    async with (
        scripted_server(script) as server,
        Screen(server.url, silence_timeout=silence, name="silent") as screen,
    ):
        await server.wait_for_attempts(2)

    assert server.attempts[1] - server.attempts[0] >= silence
    assert server.queries[1]["since"] == "4"
    assert "silent" in screen.reconnect_reasons[0]


async def test_screen_silent_before_first_message(anyio_backend: str) -> None:
    silence = 0.3

    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept()
        else:
            await peer.accept(snapshot_message(1, [wire_order("a")]))
        await peer.wait_closed()

    async with (
        scripted_server(script) as server,
        Screen(server.url, silence_timeout=silence, name="mute") as screen,
    ):
        await screen.wait_for_seq(1, timeout=WAIT)

    assert len(server.attempts) == 2
    assert server.attempts[1] - server.attempts[0] >= silence


async def test_screen_reads_messages_sent_with_handshake(anyio_backend: str) -> None:
    # The 101 response and the snapshot arrive in one read, and nothing follows.
    async def script(peer: ScriptedPeer) -> None:
        await peer.accept(snapshot_message(4, [wire_order("a")]))
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="eager") as screen:
        await screen.wait_for_seq(4, timeout=WAIT)

    assert screen.mirror.states() == {"a": ("PENDING", 1)}


async def test_screen_invalid_json_reconnects(anyio_backend: str) -> None:
    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(2, [wire_order("a")]))
            await peer.send_text('{"type": "event", "seq":')
        else:
            await peer.accept(resumed_message(since=2, head=3), wire_event(3, wire_order("b")))
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="garbled") as screen:
        await screen.wait_for_seq(3, timeout=WAIT)

    assert server.queries[1]["since"] == "2"
    assert "invalid" in screen.reconnect_reasons[0]


async def test_screen_bad_handshake_reconnects(anyio_backend: str) -> None:
    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            # A 101 response whose Sec-WebSocket-Accept does not match the key.
            await peer.send_raw(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSBhY2NlcHQ=\r\n\r\n"
            )
            return
        await peer.accept(snapshot_message(2, [wire_order("a")]))
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="bad-101") as screen:
        await screen.wait_for_seq(2, timeout=WAIT)

    assert len(server.attempts) == 2
    assert screen.reconnect_reasons[0].startswith("connect failed")


async def test_screen_wait_for_seq_after_empty_resume(anyio_backend: str) -> None:
    async def script(peer: ScriptedPeer) -> None:
        if peer.index == 0:
            await peer.accept(snapshot_message(3, [wire_order("a")]))
        else:
            await peer.accept(resumed_message(since=3, head=3))
        await peer.wait_closed()

    async with scripted_server(script) as server, Screen(server.url, name="idle") as screen:
        await screen.wait_for_seq(3, timeout=WAIT)
        screen.go_offline()
        await screen.wait_until(lambda mirror: not screen.connected, timeout=WAIT)

        screen.go_online()
        # A resume with nothing to replay changes no order, but the screen
        # is connected again and at seq 3.
        await screen.wait_for_seq(3, timeout=WAIT)

    assert len(server.attempts) == 2
    assert screen.last_outcome == "resumed"


class RecordingRandom(random.Random):
    """A seeded random source that records every jitter factor it returns."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.factors: list[float] = []

    def uniform(self, a: float, b: float) -> float:
        factor = super().uniform(a, b)
        self.factors.append(factor)
        return factor


async def test_screen_backoff_grows_to_cap(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, cap, attempts = 0.02, 0.16, 12
    jitter = RecordingRandom(1234)
    monkeypatch.setattr(orderflow.client, "random", jitter)

    async def close_at_once(peer: ScriptedPeer) -> None:
        return None

    async with (
        scripted_server(close_at_once) as server,
        Screen(server.url, backoff_base=base, backoff_max=cap, name="backoff") as screen,
    ):
        await server.wait_for_attempts(attempts, timeout=20.0)

    gaps = [later - earlier for earlier, later in itertools.pairwise(server.attempts)]
    nominal = [min(cap, base * 2**failures) for failures in range(attempts - 1)]
    factors = jitter.factors[: len(gaps)]
    assert all(reason.startswith("connect failed") for reason in screen.reconnect_reasons)
    # Each wait is at least its jittered nominal delay: the delay doubles per failure.
    for gap, delay, factor in zip(gaps, nominal, factors, strict=True):
        assert gap >= delay * factor
    assert sum(gaps[4:8]) >= 4 * cap * 0.5
    # Without the cap the last waits would be 2.5 s and more.
    assert max(gaps[8:]) < 1.0
    assert all(0.5 <= factor <= 1.0 for factor in jitter.factors)
    assert len(set(jitter.factors)) > 1


async def test_screen_quick_close_backs_off(anyio_backend: str) -> None:
    # A server that accepts the upgrade and closes before the first message
    # is a failed connection too, not a reason to reconnect in a tight loop.
    async def accept_and_close(peer: ScriptedPeer) -> None:
        await peer.accept()
        await peer.close(1011, "not now")

    async with (
        scripted_server(accept_and_close) as server,
        Screen(server.url, backoff_base=0.05, backoff_max=0.2, name="flappy"),
    ):
        await server.wait_for_attempts(6)

    gaps = [later - earlier for earlier, later in itertools.pairwise(server.attempts)]
    assert sum(gaps) >= 0.5 * (0.05 + 0.1 + 0.2 + 0.2 + 0.2)


async def test_screen_rotates_urls(anyio_backend: str) -> None:
    async def script(peer: ScriptedPeer) -> None:
        await peer.accept(snapshot_message(1, [wire_order("a")]))
        await peer.wait_closed()

    with refusing_url() as refused:
        async with (
            scripted_server(script) as server,
            Screen([refused, server.url], name="rotate") as screen,
        ):
            await screen.wait_for_seq(1, timeout=WAIT)

    assert screen.url == server.url
    assert len(server.attempts) == 1
    assert screen.reconnect_reasons[0].startswith("connect failed")


async def test_screen_http_rejection_reason(anyio_backend: str) -> None:
    problem = {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "this server requires a bearer token",
        "code": "unauthorized",
    }

    async def script(peer: ScriptedPeer) -> None:
        await peer.reject(401, problem)

    async with scripted_server(script) as server, Screen(server.url, name="denied") as screen:
        await server.wait_for_attempts(2)

    assert "401" in screen.reconnect_reasons[0]
    assert "unauthorized" in screen.reconnect_reasons[0]
    assert screen.connections == 0


# Against a real orderflow server.

FAST_FEED = FeedOptions(poll_interval=0.05, head_check_interval=0.5)
FAST_SERVER = ServerConfig(heartbeat_interval=0.5, feed=FAST_FEED)


def database_states(orders: Any) -> dict[str, tuple[str, int]]:
    return {order.id: (order.state, order.version) for order in orders}


async def test_screen_follows_server(database_url: str, anyio_backend: str) -> None:
    async with (
        running_server(database_url, config=FAST_SERVER) as running,
        Screen(running.url, name="follow") as screen,
    ):
        engine = running.engine
        await screen.wait_until(lambda mirror: screen.connected, WAIT)
        first = await engine.create(ITEMS)
        second = await engine.create(ITEMS)
        await engine.transition(first.id, "CONFIRMED")
        await engine.transition(first.id, "PREPARING")
        await engine.transition(second.id, "REJECTED")
        await screen.wait_for_seq(5, timeout=WAIT)
        truth = await engine.snapshot()

    assert screen.mirror.states() == {first.id: ("PREPARING", 3)}
    assert screen.mirror.states() == database_states(truth.orders)
    assert screen.mirror.digest == truth.digest
    assert screen.mirror.epoch == truth.epoch


async def test_screen_offline_resumes(database_url: str, anyio_backend: str) -> None:
    async with (
        running_server(database_url, config=FAST_SERVER) as running,
        Screen(running.url, name="offline") as screen,
    ):
        engine = running.engine
        order = await engine.create(ITEMS)
        await screen.wait_for_seq(1, timeout=WAIT)

        screen.go_offline()
        await screen.wait_until(lambda mirror: not screen.connected, WAIT)
        await engine.transition(order.id, "CONFIRMED")
        other = await engine.create(ITEMS)
        await engine.transition(other.id, "CANCELLED", reason="customer left")
        assert screen.mirror.last == 1

        async with screen.changes() as changes:
            screen.go_online()
            await screen.wait_for_seq(4, timeout=WAIT)
            replayed = drain(changes)
        truth = await engine.snapshot()

    assert screen.last_outcome == "resumed"
    assert screen.connections == 2
    assert [change.seq for change in replayed] == [2, 3, 4]
    assert screen.mirror.states() == database_states(truth.orders)
    assert screen.mirror.digest == truth.digest


def drain(changes: anyio.abc.ObjectReceiveStream[ScreenChange]) -> list[ScreenChange]:
    """Return every change already waiting in ``changes``."""
    assert isinstance(changes, MemoryObjectReceiveStream)
    received: list[ScreenChange] = []
    while True:
        try:
            received.append(changes.receive_nowait())
        except anyio.WouldBlock:
            return received


async def test_screen_changes_once(database_url: str, anyio_backend: str) -> None:
    seen: list[ScreenChange] = []
    async with (
        running_server(database_url, config=FAST_SERVER) as running,
        Screen(running.url, on_change=seen.append, name="changes") as screen,
    ):
        engine = running.engine
        await screen.wait_until(lambda mirror: screen.connected, WAIT)
        async with screen.changes() as changes:
            order = await engine.create(ITEMS)
            await engine.transition(order.id, "CONFIRMED")
            await screen.wait_for_seq(2, timeout=WAIT)
            screen.drop_connection()
            await engine.transition(order.id, "PREPARING")
            await engine.transition(order.id, "READY")
            await screen.wait_for_seq(4, timeout=WAIT)

            streamed = drain(changes)

    assert [(change.kind, change.seq) for change in seen] == [
        ("snapshot", 0),
        ("event", 1),
        ("event", 2),
        ("event", 3),
        ("event", 4),
    ]
    assert [(change.kind, change.seq) for change in streamed] == [
        ("event", 1),
        ("event", 2),
        ("event", 3),
        ("event", 4),
    ]
    assert streamed[3].event is not None
    assert streamed[3].event["order"]["state"] == "READY"


class LosingBroker(MemoryBroker):
    """A memory broker that loses every publication, so the feed must poll the log."""

    def publish(self, event: Event) -> None:
        pass


async def test_screen_slow_consumer_recovers(database_url: str, anyio_backend: str) -> None:
    # The feed reads the six events of one transaction in one poll and
    # queues them at once. A queue of two events makes the server send resync.
    config = ServerConfig(
        heartbeat_interval=0.5,
        feed=FeedOptions(poll_interval=0.05, head_check_interval=0.5, subscriber_queue=2),
    )
    async with (
        running_server(database_url, LosingBroker(), config=config) as running,
        Screen(running.url, name="slow") as screen,
    ):
        engine = running.engine
        await screen.wait_until(lambda mirror: screen.connected, WAIT)

        def create_six(transaction: Transaction) -> None:
            for _ in range(6):
                transaction.create(ITEMS)

        await engine.run_transaction(create_six)
        await screen.wait_for_seq(6, timeout=WAIT)
        truth = await engine.snapshot()

    assert any("slow_consumer" in reason for reason in screen.reconnect_reasons)
    assert screen.last_outcome == "resumed"
    assert screen.mirror.states() == database_states(truth.orders)
    assert screen.mirror.digest == truth.digest


async def test_screen_token_rejected(database_url: str, anyio_backend: str) -> None:
    config = ServerConfig(tokens={"kitchen-secret": TokenInfo("kitchen")}, feed=FAST_FEED)
    async with running_server(database_url, config=config) as running:
        async with Screen(running.url, name="no-token", backoff_max=0.1) as denied:
            await denied.wait_until(lambda mirror: bool(denied.reconnect_reasons), WAIT)
        async with Screen(running.url, token="kitchen-secret", name="token") as allowed:
            await allowed.wait_until(lambda mirror: allowed.connected, WAIT)

    assert "401" in denied.reconnect_reasons[0]
    assert denied.connections == 0
    assert allowed.last_outcome == "snapshot"


# HttpClient against a real server.

ORDER_KEYS = {"id", "location", "state", "version", "items", "meta", "created_at", "updated_at"}
EVENT_KEYS = {"seq", "order_id", "kind", "from", "to", "version", "at", "actor", "reason", "order"}


async def test_http_client_shapes(database_url: str, anyio_backend: str) -> None:
    async with running_server(database_url) as running, HttpClient(running.url) as client:
        created = await client.create_order(ITEMS, meta={"table": 4}, actor="till")
        moved = await client.transition(created["id"], "CONFIRMED", expected_version=1)
        fetched = await client.get_order(created["id"])
        history = await client.history(created["id"])
        active = await client.active()
        page = await client.events(0, limit=1)
        everything = await client.events(0, epoch=active["epoch"])
        health = await client.health()

    assert set(created) == ORDER_KEYS
    assert (created["state"], created["version"]) == ("PENDING", 1)
    assert created["meta"] == {"table": 4}
    assert (moved["state"], moved["version"]) == ("CONFIRMED", 2)
    assert fetched == moved
    assert [set(event) for event in history] == [EVENT_KEYS, EVENT_KEYS]
    assert [event["to"] for event in history] == ["PENDING", "CONFIRMED"]
    assert set(active) == {"location", "epoch", "head", "digest", "orders"}
    assert active["head"] == 2
    assert active["orders"] == [moved]
    assert active["digest"] == digest_of([(moved["id"], 2)])
    assert set(page) == {"epoch", "head", "events"}
    assert [event["seq"] for event in page["events"]] == [1]
    assert [event["seq"] for event in everything["events"]] == [1, 2]
    assert health["status"] == "ok"
    assert health["heads"] == {"main": 2}


ERROR_CASES = {
    "unknown order": ("get", 404, "not_found"),
    "stale version": ("stale", 409, "version_conflict"),
    "illegal move": ("illegal", 409, "invalid_transition"),
    "empty items": ("empty", 422, "invalid_request"),
    "taken id": ("taken", 409, "id_conflict"),
    "reused key": ("reused", 409, "idempotency_key_reused"),
    "other epoch": ("epoch", 410, "history_truncated"),
}


async def provoke(client: HttpClient, case: str, order_id: str) -> None:
    if case == "get":
        await client.get_order("no-such-order")
    elif case == "stale":
        await client.transition(order_id, "CONFIRMED", expected_version=7)
    elif case == "illegal":
        await client.transition(order_id, "COMPLETED")
    elif case == "empty":
        await client.create_order([])
    elif case == "taken":
        await client.create_order(ITEMS, id=order_id)
    elif case == "reused":
        await client.create_order(ITEMS, idempotency_key="key-1")
        await client.create_order([{"name": "Calzone", "quantity": 1}], idempotency_key="key-1")
    elif case == "epoch":
        await client.events(0, epoch="not-the-epoch")


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
async def test_http_client_errors(database_url: str, anyio_backend: str, case: str) -> None:
    action, status, code = ERROR_CASES[case]
    async with running_server(database_url) as running, HttpClient(running.url) as client:
        order = await client.create_order(ITEMS)
        with pytest.raises(ApiError) as caught:
            await provoke(client, action, order["id"])

    assert caught.value.status == status
    assert caught.value.code == code
    assert caught.value.problem["status"] == status
    assert caught.value.problem["title"]


async def test_http_client_keep_alive(database_url: str, anyio_backend: str) -> None:
    async with running_server(database_url) as running, HttpClient(running.url) as client:
        ports: set[int] = set()
        order = await client.create_order(ITEMS)
        for _ in range(4):
            await client.get_order(order["id"])
            # The client's one idle connection: the same local port every time.
            ports.update(c.stream.extra(SocketAttribute.local_port) for c in client._idle)
        await client.active()
        open_connections = running.server.connection_count

    assert len(ports) == 1
    assert open_connections == 1


@pytest.mark.anyio
async def test_http_update_order(database_url: str) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as http:
        order = await http.create_order([{"name": "Flan", "quantity": 1}])
        updated = await http.update_order(
            order["id"], items=[{"name": "Flan", "quantity": 3}], expected_version=1
        )
    assert updated["version"] == 2
    assert updated["items"] == [{"name": "Flan", "quantity": 3}]


@pytest.mark.anyio
async def test_on_change_error_keeps_screen(database_url: str) -> None:
    """A callback that raises is logged; the screen keeps applying events."""

    def explode(change: ScreenChange) -> None:
        raise RuntimeError("callback bug")

    async with (
        running_server(database_url) as server,
        HttpClient(server.url) as http,
        Screen(server.url, on_change=explode) as screen,
    ):
        first = await http.create_order([{"name": "Flan", "quantity": 1}])
        second = await http.create_order([{"name": "Café", "quantity": 1}])
        await screen.wait_until(
            lambda mirror: {first["id"], second["id"]} <= set(mirror.orders), timeout=10
        )
    assert screen.mirror.last == 2
