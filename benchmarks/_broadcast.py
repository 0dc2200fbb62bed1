"""A helper process: the plain broadcast baseline, written with the websockets library.

    python -m benchmarks._broadcast --payloads FILE

``FILE`` contains a JSON list of event objects read from an orderflow event
log, so every message has the size and shape of an orderflow event frame.
The server sends each new connection a small first message (``{"type":
"snapshot", "head": ...}``, as orderflow does) and then only broadcasts,
with ``websockets.asyncio.server.broadcast``. It prints ``{"ready": true,
"url": ...}`` and replies with one JSON line to each command line on stdin:

- ``{"cmd": "commit", "count": n}``: n messages, each with the next seq and
  ``at`` set to the moment it is sent;
- ``{"cmd": "burst", "count": n}``: n messages with ``at`` set to the moment
  the burst starts, broadcast one after another;
- ``{"cmd": "quit"}``.

Write commands reply ``{"seq": last seq sent}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve

_SEQ_MARK = '"seq":0,'
_AT_MARK = '"at":""'


def _templates(events: list[dict[str, Any]]) -> list[str]:
    """Return %-templates of the event messages with a slot for seq and one for at."""
    templates = []
    for event in events:
        message = {"type": "event", **event, "seq": 0, "at": ""}
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":")).replace("%", "%%")
        if text.count(_SEQ_MARK) != 1 or text.count(_AT_MARK) != 1:
            raise ValueError(f"cannot find seq and at in the payload {text[:120]}")
        templates.append(text.replace(_SEQ_MARK, '"seq":%d,').replace(_AT_MARK, '"at":"%s"'))
    return templates


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Broadcaster:
    def __init__(self, templates: list[str]) -> None:
        self.templates = templates
        self.connections: set[ServerConnection] = set()
        self.seq = 0

    async def handle(self, connection: ServerConnection) -> None:
        await connection.send(json.dumps({"type": "snapshot", "head": self.seq, "orders": []}))
        self.connections.add(connection)
        try:
            await connection.wait_closed()
        finally:
            self.connections.discard(connection)

    def _message(self, at: str) -> str:
        self.seq += 1
        return self.templates[self.seq % len(self.templates)] % (self.seq, at)

    def commit(self, count: int) -> None:
        for _ in range(count):
            broadcast(self.connections, self._message(_now()))

    def burst(self, count: int) -> None:
        started = _now()
        for _ in range(count):
            broadcast(self.connections, self._message(started))


async def _main(templates: list[str]) -> None:
    broadcaster = _Broadcaster(templates)
    async with serve(
        broadcaster.handle, "127.0.0.1", 0, ping_interval=None, compression=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        _reply({"ready": True, "url": f"ws://127.0.0.1:{port}/ws"})

        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            name = command.get("cmd")
            if name == "quit":
                return
            if name == "commit":
                broadcaster.commit(int(command["count"]))
            elif name == "burst":
                broadcaster.burst(int(command["count"]))
            else:
                _reply({"error": f"unknown command {name!r}"})
                continue
            _reply({"seq": broadcaster.seq})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payloads", type=Path, required=True, help="JSON list of event objects")
    arguments = parser.parse_args()
    templates = _templates(json.loads(arguments.payloads.read_text()))
    asyncio.run(_main(templates))


if __name__ == "__main__":
    main()
