"""A helper process: many minimal WebSocket screens in one asyncio loop.

    python -m benchmarks._screens --url ws://127.0.0.1:PORT/ws?location=L --count N

The same client runs against orderflow and against the plain broadcast
server, so both pay the same client cost. Each screen is an asyncio
protocol: it sends the upgrade request, checks for ``101``, then parses the
server's frames itself (server frames are unmasked). For an ``event``
message it keeps the seq, the event's ``at`` and the arrival time
(``time.time()`` when the bytes were read, the same clock that stamps
``at``). It reads seq and ``at`` straight from the bytes instead of decoding
the whole JSON, because both servers write ``{"type":"event","seq":`` first
and ``at`` before the order. Other messages are decoded as JSON.

It prints ``{"ready": true, "screens": N}`` once every screen has its first
message, then replies with one JSON line to each command line on stdin:

- ``{"cmd": "wait", "seq": S}``: replies when every screen has an event with
  seq >= S: ``{"seq": S, "last_arrival": ..., "at": ...}``, the latest arrival
  of event S over all screens and its ``at``;
- ``{"cmd": "record", "on": bool}``: starts or stops keeping a latency sample
  (arrival minus ``at``) per event and screen;
- ``{"cmd": "latencies"}``: replies ``{"latencies_ms": [...]}`` and clears them;
- ``{"cmd": "open", "count": n}``: opens n more screens (idle ones, for the
  memory benchmark) and replies when they have their first message;
- ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

FIRST_MESSAGE_TIMEOUT = 60.0
CONNECT_BATCH = 50
_EVENT_START = b'{"type":"event","seq":'
_AT_KEY = b'"at":"'


class _Screen(asyncio.Protocol):
    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.buffer = bytearray()
        self.upgraded = False
        self.first: asyncio.Future[None] = hub.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.last_seq = 0
        self.last_arrival = 0.0
        self.last_at = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.hub.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first.done():
            self.first.set_exception(
                ConnectionError(f"connection lost before the first message: {exc!r}")
            )
        self.hub.lost += 1

    def data_received(self, data: bytes) -> None:
        arrival = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[:12])
            if status != b"HTTP/1.1 101":
                head = bytes(buffer[:end]).decode("latin-1")
                self.first.set_exception(ConnectionError(f"upgrade rejected: {head[:200]}"))
                return
            del buffer[: end + 4]
            self.upgraded = True

        position = 0
        size = len(buffer)
        while size - position >= 2:
            opcode = buffer[position] & 0x0F
            length = buffer[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                if size - position < 4:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 4], "big")
                start = position + 4
            elif length == 127:
                if size - position < 10:
                    break
                length = int.from_bytes(buffer[position + 2 : position + 10], "big")
                start = position + 10
            end = start + length
            if end > size:
                break
            if opcode == 1:
                self.hub.on_text(self, bytes(buffer[start:end]), arrival)
            elif opcode == 8 and self.transport is not None:
                self.transport.close()
            position = end
        if position:
            del buffer[:position]


class _Hub:
    """All screens of this process and what they received."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + ("?" + parts.query if parts.query else "")
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.screens: list[_Screen] = []
        self.recording = False
        self.samples: list[tuple[float, str]] = []
        self.lost = 0
        self.wait_seq: int | None = None
        self.reached = 0
        self.waiter: asyncio.Future[None] | None = None

    def on_text(self, screen: _Screen, payload: bytes, arrival: float) -> None:
        if payload.startswith(_EVENT_START):
            # Reading seq and at from the bytes keeps the client's own work
            # small, because with 100 screens in one process it delays the
            # arrival of the last screen's copy.
            seq_end = payload.index(b",", len(_EVENT_START))
            seq = int(payload[len(_EVENT_START) : seq_end])
            at_start = payload.index(_AT_KEY, seq_end) + len(_AT_KEY)
            at = payload[at_start : payload.index(b'"', at_start)].decode()
            previous = screen.last_seq
            screen.last_seq = seq
            screen.last_arrival = arrival
            screen.last_at = at
            if self.recording:
                self.samples.append((arrival, at))
            target = self.wait_seq
            if target is not None and previous < target <= seq:
                self.reached += 1
                waiter = self.waiter
                if self.reached >= len(self.screens) and waiter is not None and not waiter.done():
                    waiter.set_result(None)
            return
        message = json.loads(payload)
        if message.get("type") in ("snapshot", "resumed") and not screen.first.done():
            screen.last_seq = int(message["head"])
            screen.first.set_result(None)

    async def _connect(self, screen: _Screen) -> None:
        await self.loop.create_connection(lambda: screen, self.host, self.port)

    async def open(self, count: int) -> None:
        opened: list[_Screen] = []
        for start in range(0, count, CONNECT_BATCH):
            batch = [_Screen(self) for _ in range(min(CONNECT_BATCH, count - start))]
            await asyncio.gather(*(self._connect(screen) for screen in batch))
            opened.extend(batch)
        await asyncio.wait_for(
            asyncio.gather(*(screen.first for screen in opened)), FIRST_MESSAGE_TIMEOUT
        )
        self.screens.extend(opened)

    async def wait(self, seq: int, timeout: float) -> dict[str, Any]:
        self.wait_seq = seq
        self.reached = sum(1 for screen in self.screens if screen.last_seq >= seq)
        if self.reached < len(self.screens):
            self.waiter = self.loop.create_future()
            try:
                await asyncio.wait_for(self.waiter, timeout)
            finally:
                self.waiter = None
        self.wait_seq = None
        last = max(self.screens, key=lambda screen: screen.last_arrival)
        return {"seq": seq, "last_arrival": last.last_arrival, "at": last.last_at}

    def latencies(self) -> list[float]:
        samples, self.samples = self.samples, []
        return [
            (arrival - datetime.fromisoformat(at).timestamp()) * 1000.0 for arrival, at in samples
        ]


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _main(url: str, count: int) -> None:
    hub = _Hub(url)
    await hub.open(count)
    _reply({"ready": True, "screens": len(hub.screens)})

    reader = asyncio.StreamReader()
    await hub.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        command = json.loads(line)
        name = command.get("cmd")
        try:
            if name == "quit":
                return
            if name == "wait":
                _reply(await hub.wait(int(command["seq"]), float(command.get("timeout", 60))))
            elif name == "record":
                hub.recording = bool(command["on"])
                _reply({"recording": hub.recording})
            elif name == "latencies":
                _reply({"latencies_ms": hub.latencies()})
            elif name == "open":
                await hub.open(int(command["count"]))
                _reply({"screens": len(hub.screens)})
            else:
                raise ValueError(f"unknown command {name!r}")
        except (TimeoutError, ConnectionError, ValueError, KeyError) as exc:
            _reply({"error": f"{type(exc).__name__}: {exc}", "lost": hub.lost})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="ws://host:port/path?query of the server")
    parser.add_argument("--count", type=int, required=True, help="screens to open at the start")
    arguments = parser.parse_args()
    asyncio.run(_main(arguments.url, arguments.count))


if __name__ == "__main__":
    main()
