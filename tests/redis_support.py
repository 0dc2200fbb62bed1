"""Helpers for broker tests: a redis-server of the test's own, and events to publish.

``TemporaryRedis`` runs ``redis-server`` as a child process on a free
loopback port, so a test can stop, kill and restart it without touching the
shared server. It needs the ``redis-server`` binary (Debian package
``redis-server``); tests skip without it, or fail when
ORDERFLOW_TEST_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import anyio
import pytest
import redis

from orderflow.broker import Publication, Subscription
from orderflow.models import Event, Item, Order
from tests.conftest import REQUIRE_SERVICES

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
PORT_ATTEMPTS = 5
COLLECT_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """Return the path of ``redis-server``, or skip (fail in CI) with how to install it."""
    found = shutil.which("redis-server")
    if found:
        return found
    message = "fault tests need the redis-server binary: apt-get install redis-server"
    if REQUIRE_SERVICES:
        pytest.fail(message + "; ORDERFLOW_TEST_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class TemporaryRedis:
    """A ``redis-server`` child process on 127.0.0.1, without persistence.

    ``start()`` waits (up to ``START_TIMEOUT`` seconds) until it responds to
    PING. ``stop()`` sends SIGTERM and falls back to SIGKILL, ``kill()``
    sends SIGKILL, and ``start()`` after either reuses the same port, so
    clients can reconnect to the same URL.
    """

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis-server.log"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        """Return a client for commands such as CLIENT KILL; the caller closes it."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
        )

    def start(self) -> None:
        """Start the server; on the first start, try other ports if the chosen one was taken."""
        attempts = PORT_ATTEMPTS if self.process is None else 1
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            if self._spawn():
                return
        raise RuntimeError(
            f"redis-server did not start on 127.0.0.1:{self.port}; its log ends with:\n"
            + self._log_tail()
        )

    def _spawn(self) -> bool:
        """Start one redis-server and wait until it responds; False if it exited."""
        command = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.directory),
        ]
        if self.password:
            command += ["--requirepass", self.password]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        deadline = time.monotonic() + START_TIMEOUT
        with contextlib.closing(self.client()) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.ConnectionError:
                    pass
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"redis-server on 127.0.0.1:{self.port} did not respond to PING within "
            f"{START_TIMEOUT} s; its log ends with:\n" + self._log_tail()
        )

    def stop(self) -> None:
        """Stop the server with SIGTERM, or SIGKILL after ``STOP_TIMEOUT`` seconds."""
        if not self.running or self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if not self.running or self.process is None:
            return
        self.process.kill()
        self.process.wait(STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"

    def __enter__(self) -> TemporaryRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()


def make_event(location: str, seq: int, *, notes: str | None = None) -> Event:
    """Return an ``order.created`` event with seq ``seq`` of an order in ``location``."""
    now = datetime(2026, 1, 31, 12, 0, seq % 60, 123456, tzinfo=UTC)
    order = Order(
        id=f"{location}-{seq}",
        location=location,
        state="PENDING",
        version=1,
        items=(Item("Margherita", 1, "oven", notes),),
        meta={"table": "7"},
        created_at=now,
        updated_at=now,
    )
    return Event(
        seq=seq,
        order_id=order.id,
        kind="order.created",
        from_state=None,
        to_state="PENDING",
        version=1,
        at=now,
        actor="till-1",
        reason=None,
        order=order,
    )


def collect(
    subscription: Subscription, count: int, timeout: float = COLLECT_TIMEOUT
) -> list[Publication]:
    """Wait (up to ``timeout`` seconds) until ``count`` publications arrived; return them all."""
    received: list[Publication] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        received.extend(subscription.wait(remaining))
    return received


async def collect_async(subscription: Subscription, count: int) -> list[Publication]:
    """Like ``collect``, awaiting ``receive()`` on the running async backend."""
    received: list[Publication] = []
    with anyio.move_on_after(COLLECT_TIMEOUT):
        while len(received) < count:
            received.extend(await subscription.receive())
    return received


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass; return whether it was."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
