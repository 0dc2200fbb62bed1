"""Memory: resident memory of ``orderflow serve`` per idle screen, and with many orders.

The server is the ``orderflow serve`` command in a child process, logging
at WARNING into a file. Resident memory is ``VmRSS``
from ``/proc/PID/status``; socket buffers live in the kernel and are not
part of it.

- Per idle screen: open a few screens first, so the feed, the imports and
  the allocator's first arenas are in place, read the RSS, open N more
  idle screens (``benchmarks._screens``), read it again, and divide the
  growth by N. The baseline is the plain websockets broadcast server
  measured the same way. Median over fresh server processes.
- Orders: the RSS of a server after ``GET /orders/active``, which loads the
  feed and with it every active order. One database has that many active
  orders, another that many completed ones; the baseline is the same
  server on an empty database.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks._children import REPO_ROOT, Child, ChildError, rss_kib
from benchmarks._support import Recorder, Sizes, goal_check, median, seed, with_goal
from orderflow import Engine

GOAL_KIB = 64.0
WARM_SCREENS = 10


STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    pid: int


@contextmanager
def orderflow_serve(database: str, log_path: Path) -> Iterator[Served]:
    """Run ``orderflow serve`` on a free loopback port until the block ends (SIGTERM by pid)."""
    command = [sys.executable, "-m", "orderflow", "--log-level", "WARNING", "serve"]
    command += ["--db", database, "--host", "127.0.0.1", "--port", "0"]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=environment)
    try:
        yield Served(_listening_url(process, log_path), process.pid)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(15)
        if process.stdout is not None:
            process.stdout.close()


def _listening_url(process: subprocess.Popen[bytes], log_path: Path) -> str:
    """Read stdout until ``orderflow listening on URL``; return the URL."""
    assert process.stdout is not None
    descriptor = process.stdout.fileno()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    output = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([descriptor], [], [], 0.5)
        if not readable:
            continue
        chunk = os.read(descriptor, 4096)
        if not chunk:
            break
        output += chunk
        for line in output.decode(errors="replace").splitlines():
            if line.startswith("orderflow listening on "):
                return line.split()[-1]
    raise ChildError(
        f"orderflow serve did not start within {STARTUP_TIMEOUT} s; its log:\n"
        + log_path.read_text(errors="replace")[-2000:]
    )


def _screens(workdir: Path, ws_url: str, count: int) -> Child:
    child = Child(
        "benchmarks._screens",
        ["--url", ws_url, "--count", str(count)],
        workdir / "memory-screens.log",
    )
    child.wait_ready()
    return child


def _per_screen_kib(workdir: Path, pid: int, ws_url: str, count: int) -> float:
    screens = _screens(workdir, ws_url, WARM_SCREENS)
    try:
        before = rss_kib(pid)
        opened = screens.call({"cmd": "open", "count": count}, 120)
        assert opened["screens"] == WARM_SCREENS + count
        after = rss_kib(pid)
    finally:
        screens.close()
    return (after - before) / count


def _load_feed(url: str) -> int:
    with urllib.request.urlopen(f"{url}/orders/active?location=main", timeout=60) as response:
        body: dict[str, Any] = json.loads(response.read())
    return len(body["orders"])


def _server_kib(database: str, log_path: Path) -> tuple[int, int]:
    """Return the RSS in KiB of ``orderflow serve`` on ``database`` with its feed loaded."""
    with orderflow_serve(database, log_path) as server:
        active = _load_feed(server.url)
        return rss_kib(server.pid), active


def test_memory_per_screen(
    benchmark: Any, sizes: Sizes, recorder: Recorder, tmp_path: Path, workdir: Path
) -> None:
    count = sizes.memory_screens
    ours: list[float] = []
    plain: list[float] = []
    payloads = tmp_path / "payloads.json"
    database = f"sqlite:///{tmp_path / 'memory.db'}"
    with Engine.open(database) as engine:
        seed(engine, ["main"], 5)
        events = engine.events_since(0, location="main").events
    payloads.write_text(json.dumps([json.loads(event.to_json()) for event in events]))

    def setup() -> None:
        baseline = Child(
            "benchmarks._broadcast", ["--payloads", str(payloads)], workdir / "memory-plain.log"
        )
        try:
            ready = baseline.wait_ready()
            plain.append(_per_screen_kib(workdir, baseline.pid, ready["url"], count))
        finally:
            baseline.close()

    def measure() -> None:
        with orderflow_serve(database, workdir / "memory-serve.log") as server:
            ws_url = server.url.replace("http://", "ws://", 1) + "/ws?location=main"
            ours.append(_per_screen_kib(workdir, server.pid, ws_url, count))

    benchmark.pedantic(measure, setup=setup, rounds=sizes.memory_repeats)

    value = median(ours)
    row: dict[str, Any] = {
        "case": f"per idle screen ({count} screens)",
        "value": f"{value:.1f} KiB",
        "baseline": f"{median(plain):.1f} KiB (plain websockets server)",
        "ratio": value / median(plain) if median(plain) > 0 else None,
        "kib": ours,
        "plain_kib": plain,
    }
    met, miss = goal_check(value, GOAL_KIB, at_least=False)
    with_goal(row, f"<= {GOAL_KIB:g} KiB", met, miss)
    benchmark.extra_info.update(row)
    recorder.add("memory", row)


@pytest.mark.parametrize("finished", [False, True], ids=["active", "completed"])
def test_memory_orders(
    benchmark: Any,
    sizes: Sizes,
    recorder: Recorder,
    tmp_path: Path,
    workdir: Path,
    finished: bool,
) -> None:
    count = sizes.memory_orders
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    full = f"sqlite:///{tmp_path / 'orders.db'}"
    with Engine.open(empty) as engine:
        engine.position("main")
    with Engine.open(full) as engine:
        owned = seed(engine, ["main"], count)[0]
        if finished:
            with engine.transaction() as tx:
                for entry in owned.orders:
                    tx.transition(entry.order_id, "COMPLETED", actor="counter")

    empty_kib: list[int] = []
    full_kib: list[int] = []
    loaded: list[int] = []

    def setup() -> None:
        empty_kib.append(_server_kib(empty, workdir / "memory-serve.log")[0])

    def measure() -> None:
        kib, active = _server_kib(full, workdir / "memory-serve.log")
        full_kib.append(kib)
        loaded.append(active)

    benchmark.pedantic(measure, setup=setup, rounds=sizes.memory_repeats)

    assert loaded[0] == (0 if finished else count)
    growth = median(full_kib) - median(empty_kib)
    state = "completed" if finished else "active"
    row: dict[str, Any] = {
        "case": f"{count:,} {state} orders in the database",
        "value": f"{median(full_kib) / 1024:.1f} MiB",
        "baseline": f"{median(empty_kib) / 1024:.1f} MiB (empty database)",
        "ratio": median(full_kib) / median(empty_kib),
        "growth_kib": growth,
        "per_order_bytes": growth * 1024 / count,
        "detail": (
            f"{count:,} {state} orders: {growth / 1024:+.1f} MiB against an empty database, "
            f"{growth * 1024 / count:+,.0f} bytes per order"
        ),
    }
    benchmark.extra_info.update(row)
    recorder.add("memory", row)
