"""Helpers that run a real orderflow server on a free loopback port.

``running_server`` runs the server inside the test's own event loop (asyncio
or trio), on real sockets. ``ServerProcess`` runs ``python -m orderflow
serve`` as a child process, for tests of the command line, signals and
several nodes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from orderflow.aio import AsyncEngine
from orderflow.broker import Broker
from orderflow.feed import FeedOptions
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
) -> AsyncIterator[RunningServer]:
    """Run a server on 127.0.0.1 with a free port for the duration of the block."""
    config = replace(config or ServerConfig(), host="127.0.0.1", port=0)
    if feed is not None:
        config = replace(config, feed=feed)
    async with AsyncEngine.open(database_url, broker, feed_options=config.feed) as engine:
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
        self.url = self._read_url(startup_timeout)

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
        stderr = self.process.stderr.read() if self.process.stderr else ""
        raise RuntimeError(f"orderflow serve did not start within {timeout} s:\n{stderr}")

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
        """Return what the process wrote to stderr; call after it stopped."""
        return self.process.stderr.read() if self.process.stderr else ""

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
