"""Helpers that run a real orderflow server on a free loopback port.

``running_server`` runs the server inside the test's own event loop (asyncio
or trio), on real sockets. ``ServerProcess`` runs ``python -m orderflow
serve`` as a child process, for tests of the command line, signals and
several nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from orderflow.aio import AsyncEngine
from orderflow.broker import Broker
from orderflow.feed import FeedOptions
from orderflow.lifecycle import Lifecycle
from orderflow.server import Server, ServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunningServer:
    url: str
    engine: AsyncEngine
    server: Server

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@asynccontextmanager
async def running_server(
    database_url: str,
    broker: str | Broker = "memory://",
    *,
    config: ServerConfig | None = None,
    feed: FeedOptions | None = None,
    lifecycle: Lifecycle | Mapping[str, Any] | None = None,
) -> AsyncIterator[RunningServer]:
    """Run a server on 127.0.0.1 with a free port for the duration of the block.

    ``lifecycle`` replaces the default restaurant lifecycle of the engine.
    """
    config = replace(config or ServerConfig(), host="127.0.0.1", port=0)
    if feed is not None:
        config = replace(config, feed=feed)
    async with AsyncEngine.open(
        database_url, broker, lifecycle=lifecycle, feed_options=config.feed
    ) as engine:
        server = Server(engine, config)
        async with anyio.create_task_group() as task_group:
            url = await task_group.start(server.serve)
            try:
                yield RunningServer(url, engine, server)
            finally:
                server.shutdown()


class ServerProcess:
    """``python -m orderflow serve`` as a child process on a free loopback port.

    The constructor waits (bounded) for the line that says where it listens.
    Stop it with ``terminate()`` (SIGTERM, a graceful shutdown), ``kill()``
    (SIGKILL) or as a context manager.
    """

    def __init__(
        self,
        database_url: str,
        broker_url: str = "memory://",
        *,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        command = [
            sys.executable,
            "-m",
            "orderflow",
            "serve",
            "--db",
            database_url,
            "--broker",
            broker_url,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *extra_args,
        ]
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        # A reader thread drains stderr, so a chatty server never blocks on
        # a full pipe; stderr_text() returns what it collected.
        self._stderr_lines: list[str] = []
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()
        self.url = self._read_url(startup_timeout)

    def _drain_stderr(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        for line in stream:
            self._stderr_lines.append(line)

    def _read_url(self, timeout: float) -> str:
        assert self.process.stdout is not None
        import selectors
        import time

        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = self.process.stdout.readline()
                if not line:
                    break
                if line.startswith("orderflow listening on "):
                    return line.split()[-1]
        finally:
            selector.close()
        self.kill()
        raise RuntimeError(
            f"orderflow serve did not start within {timeout} s:\n{self.stderr_text()}"
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def terminate(self, timeout: float = 15.0) -> int:
        """Send SIGTERM and return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stderr_text(self) -> str:
        """Return what the process wrote to stderr; complete once it stopped."""
        if self.process.poll() is not None:
            self._stderr_reader.join(5)
        return "".join(self._stderr_lines)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.kill()
        self._stderr_reader.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


# Raw HTTP: requests written byte for byte and responses parsed by hand, so a
# test checks the exact bytes the server wrote (pipelining, HEAD, limits).


@dataclass
class RawResponse:
    """One HTTP response as read off the wire. Header names are lower case."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    header_lines: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """A TCP connection to a test server that sends bytes exactly as given."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        with anyio.fail_after(5):
            await self.stream.send(data)

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; return False at the end of the stream."""
        try:
            data = await self.stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
            return False
        self.buffer += data
        return True

    async def read_response(self, *, timeout: float = 5.0, head: bool = False) -> RawResponse:
        """Read one response. Set ``head`` for the response to a HEAD request, which has no body."""
        with anyio.fail_after(timeout):
            while b"\r\n\r\n" not in self.buffer:
                if not await self._fill():
                    raise EOFError(f"the connection closed inside a response head: {self.buffer!r}")
            head_bytes, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
            version, status, *_ = status_line.split(" ", 2)
            if version != "HTTP/1.1":
                raise ValueError(f"unexpected status line {status_line!r}")
            header_lines = []
            for line in lines:
                name, _, value = line.partition(":")
                header_lines.append((name.strip().lower(), value.strip()))
            headers = {name: value for name, value in header_lines}
            response = RawResponse(int(status), headers, b"", header_lines)
            if head or response.status in (204, 304) or response.status < 200:
                return response
            if "transfer-encoding" in headers:
                raise ValueError("the test parser reads only content-length bodies")
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                if not await self._fill():
                    raise EOFError("the connection closed inside a response body")
            response.body, self.buffer = self.buffer[:length], self.buffer[length:]
            return response

    async def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes the connection; return what came before the end.

        Raises ``TimeoutError`` if the connection is still open after ``timeout`` s.
        """
        with anyio.fail_after(timeout):
            while await self._fill():
                pass
        rest, self.buffer = self.buffer, b""
        return rest


@asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[RawConnection]:
    """Open a ``RawConnection`` to 127.0.0.1:``port`` for the duration of the block."""
    with anyio.fail_after(5):
        stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        yield RawConnection(stream)


async def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> RawResponse:
    """Send ``data`` on a new connection and return the first response."""
    async with raw_connection(port) as connection:
        await connection.send(data)
        return await connection.read_response(timeout=timeout)


def http_request(
    method: str,
    target: str,
    body: bytes | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Encode one HTTP/1.1 request with a Content-Length when it has a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# The digest of the wire contract, computed here without orderflow's own code.


def fnv1a_digest(orders: Iterable[tuple[str, int]]) -> str:
    """Return the digest of ``(order id, version)`` pairs: the sum of 64-bit FNV-1a hashes."""
    total = 0
    for order_id, version in orders:
        value = 0xCBF29CE484222325
        for byte in f"{order_id}\n{version}".encode():
            value = ((value ^ byte) * 0x100000001B3) % 2**64
        total = (total + value) % 2**64
    return f"{total:016x}"
