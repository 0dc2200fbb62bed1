"""Fan-out: from a commit to many screens, against a plain websockets broadcast server.

The orderflow server is ``benchmarks._node``, the same ``Server`` as
``orderflow serve``, on SQLite with ``synchronous=normal``. The screens are
``benchmarks._screens`` in a process of their own, so their cost does not
land on the server's core. The baseline is ``benchmarks._broadcast``, a
server written with the websockets library that broadcasts payloads read
from the orderflow event log, so the messages have the same size.

- memory broker: the serving node commits the events itself, as an
  embedded server does.
- Redis broker: a second node commits the events on the same database and
  publishes them to Redis. The serving node hears of them only through
  Redis, as a node of a multi-node setup does.

Latency: one event at a time; each screen keeps its arrival time minus the
event's ``at`` (taken inside the write transaction, just before the
commit). The baseline stamps ``at`` when it sends. Figures are the median
over three blocks of rounds of each block's p50 and p99.

Throughput: a burst of events committed in one transaction (the baseline:
the same number of messages broadcast one after another), timed from the
last event's ``at`` to its arrival at the last screen; deliveries per second
are events times screens over that time, median of the bursts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from benchmarks._children import Child, start_children
from benchmarks._support import (
    SIZES,
    Recorder,
    Sizes,
    block_percentile,
    goal_check,
    median,
    percentile,
    seed,
    with_goal,
)
from orderflow import Engine

LOCATION = "fanout"
LATENCY_GOAL_MS = 10.0
LATENCY_GOAL_SCREENS = 100
THROUGHPUT_GOAL = 0.5
WAIT_TIMEOUT = 60.0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_fanout":
        return
    sizes = SIZES[metafunc.config.getoption("--bench-size")]
    cases = [
        (broker, screens, kind)
        for broker in ("memory", "redis")
        for screens in sizes.fanout_screens
        for kind in ("latency", "throughput")
    ]
    metafunc.parametrize(
        ("broker", "screens", "kind"),
        cases,
        ids=[f"{broker}-screens={n}-{kind}" for broker, n, kind in cases],
    )


@dataclass
class Target:
    """A server the screens connect to, and the process that makes it send.

    ``location`` is None for the plain server, which has none.
    """

    name: str
    ws_url: str
    writer: Child
    location: str | None = LOCATION


def _orderflow_ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + f"/ws?location={LOCATION}"


@dataclass
class ScreenPool:
    """At most one screens process per target, for the screen count of the current test."""

    workdir: Path
    running: dict[str, tuple[int, Child]] = field(default_factory=dict)

    def get(self, target: Target, count: int) -> Child:
        current = self.running.get(target.name)
        if current is not None and current[0] == count:
            return current[1]
        if current is not None:
            current[1].close()
        child = Child(
            "benchmarks._screens",
            ["--url", target.ws_url, "--count", str(count)],
            self.workdir / f"screens-{target.name}.log",
        )
        child.wait_ready()
        self.running[target.name] = (count, child)
        return child

    def keep_only(self, names: set[str]) -> None:
        """Close the screens of every other target, so idle screens take no share of the CPU."""
        for name in set(self.running) - names:
            self.running.pop(name)[1].close()

    def close(self) -> None:
        self.keep_only(set())


def _database(workdir: Path, name: str, orders: int) -> str:
    url = f"sqlite:///{workdir / name}?synchronous=normal"
    with Engine.open(url) as engine:
        seed(engine, [LOCATION], orders)
    return url


def _payloads(database: str, path: Path, count: int) -> Path:
    """Write the last ``count`` transition events of the log as JSON objects, for the baseline."""
    with Engine.open(database) as engine:
        head = engine.position(LOCATION).head
        page = engine.events_since(max(0, head - count), location=LOCATION, limit=count)
    events = [json.loads(event.to_json()) for event in page.events]
    path.write_text(json.dumps(events))
    return path


@pytest.fixture(scope="module")
def screen_pool(workdir: Path) -> Iterator[ScreenPool]:
    pool = ScreenPool(workdir)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def memory_and_plain(sizes: Sizes, workdir: Path) -> Iterator[tuple[Target, Target]]:
    """The orderflow node with the memory broker, and the plain broadcast server."""
    database = _database(workdir, "fanout-memory.db", sizes.fanout_orders)
    payloads = _payloads(database, workdir / "payloads.json", sizes.fanout_orders)
    node = Child(
        "benchmarks._node",
        ["--db", database, "--serve", "--location", LOCATION],
        workdir / "fanout-memory-node.log",
    )
    plain = Child(
        "benchmarks._broadcast", ["--payloads", str(payloads)], workdir / "fanout-plain.log"
    )
    try:
        start_children([node, plain])
        assert node.ready is not None
        assert plain.ready is not None
        yield (
            Target("memory", _orderflow_ws_url(node.ready["url"]), node),
            Target("plain", plain.ready["url"], plain, location=None),
        )
    finally:
        node.close()
        plain.close()


@pytest.fixture(scope="module")
def redis_target(sizes: Sizes, workdir: Path, redis_url: str) -> Iterator[Target]:
    """An orderflow node that hears of events through Redis, and the node that commits them."""
    database = _database(workdir, "fanout-redis.db", sizes.fanout_orders)
    separator = "&" if "?" in redis_url else "?"
    broker = f"{redis_url}{separator}channel_prefix=ofbench-{secrets.token_hex(4)}"
    serving = Child(
        "benchmarks._node",
        ["--db", database, "--broker", broker, "--serve", "--location", LOCATION],
        workdir / "fanout-redis-node.log",
    )
    writing = Child(
        "benchmarks._node",
        ["--db", database, "--broker", broker, "--location", LOCATION],
        workdir / "fanout-redis-writer.log",
    )
    try:
        start_children([serving, writing])
        assert serving.ready is not None
        yield Target("redis", _orderflow_ws_url(serving.ready["url"]), writing)
    finally:
        writing.close()
        serving.close()


def _write(target: Target, command: str, count: int) -> int:
    message: dict[str, Any] = {"cmd": command, "count": count}
    if target.location:
        message["location"] = target.location
    seq: int = target.writer.call(message, WAIT_TIMEOUT)["seq"]
    return seq


def _deliver(target: Target, screens: Child, command: str, count: int) -> dict[str, Any]:
    """Make ``target`` send ``count`` events and wait until every screen has them."""
    seq = _write(target, command, count)
    return screens.call({"cmd": "wait", "seq": seq, "timeout": WAIT_TIMEOUT}, WAIT_TIMEOUT + 5)


def _burst_seconds(reply: dict[str, Any]) -> float:
    seconds: float = reply["last_arrival"] - datetime.fromisoformat(reply["at"]).timestamp()
    return seconds


def test_fanout(
    benchmark: Any,
    sizes: Sizes,
    recorder: Recorder,
    request: pytest.FixtureRequest,
    memory_and_plain: tuple[Target, Target],
    screen_pool: ScreenPool,
    broker: str,
    screens: int,
    kind: str,
) -> None:
    memory, plain = memory_and_plain
    target = memory if broker == "memory" else request.getfixturevalue("redis_target")
    screen_pool.keep_only({target.name, plain.name})
    ours = screen_pool.get(target, screens)
    theirs = screen_pool.get(plain, screens)

    if kind == "latency":
        _latency(benchmark, sizes, recorder, target, plain, ours, theirs, broker, screens)
    else:
        _throughput(benchmark, sizes, recorder, target, plain, ours, theirs, broker, screens)


def _latency(
    benchmark: Any,
    sizes: Sizes,
    recorder: Recorder,
    target: Target,
    plain: Target,
    ours: Child,
    theirs: Child,
    broker: str,
    screens: int,
) -> None:
    for _ in range(3):
        _deliver(target, ours, "commit", 1)
        _deliver(plain, theirs, "commit", 1)
    for child in (ours, theirs):
        child.call({"cmd": "record", "on": True})

    def setup() -> None:
        _deliver(plain, theirs, "commit", 1)

    def commit() -> None:
        _deliver(target, ours, "commit", 1)

    benchmark.pedantic(commit, setup=setup, rounds=sizes.fanout_latency_rounds)

    latencies = ours.call({"cmd": "latencies"})["latencies_ms"]
    plain_latencies = theirs.call({"cmd": "latencies"})["latencies_ms"]
    for child in (ours, theirs):
        child.call({"cmd": "record", "on": False})
    assert len(latencies) == sizes.fanout_latency_rounds * screens
    assert len(plain_latencies) == sizes.fanout_latency_rounds * screens

    row: dict[str, Any] = {
        "broker": broker,
        "screens": screens,
        "p50_ms": block_percentile(latencies, 0.5),
        "p99_ms": block_percentile(latencies, 0.99),
        "plain_p50_ms": block_percentile(plain_latencies, 0.5),
        "plain_p99_ms": block_percentile(plain_latencies, 0.99),
        "samples": len(latencies),
        "pooled_p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }
    row["ratio"] = row["p99_ms"] / row["plain_p99_ms"]
    if screens == LATENCY_GOAL_SCREENS:
        met, miss = goal_check(row["p99_ms"], LATENCY_GOAL_MS, at_least=False)
        with_goal(row, f"p99 <= {LATENCY_GOAL_MS:g} ms", met, miss)
    benchmark.extra_info.update(row)
    recorder.add("fanout_latency", row)


def _throughput(
    benchmark: Any,
    sizes: Sizes,
    recorder: Recorder,
    target: Target,
    plain: Target,
    ours: Child,
    theirs: Child,
    broker: str,
    screens: int,
) -> None:
    events = sizes.fanout_burst_events
    durations: list[float] = []
    plain_durations: list[float] = []

    def setup() -> None:
        plain_durations.append(_burst_seconds(_deliver(plain, theirs, "burst", events)))

    def burst() -> None:
        durations.append(_burst_seconds(_deliver(target, ours, "burst", events)))

    benchmark.pedantic(burst, setup=setup, rounds=sizes.fanout_bursts, warmup_rounds=1)
    durations, plain_durations = durations[1:], plain_durations[1:]

    deliveries = events * screens
    row: dict[str, Any] = {
        "broker": broker,
        "screens": screens,
        "orderflow": deliveries / median(durations),
        "plain": deliveries / median(plain_durations),
        "burst_events": events,
        "durations_s": durations,
        "plain_durations_s": plain_durations,
    }
    row["ratio"] = row["orderflow"] / row["plain"]
    met, miss = goal_check(row["ratio"], THROUGHPUT_GOAL, at_least=True)
    with_goal(row, f">= {THROUGHPUT_GOAL:.2f} of plain", met, miss)
    benchmark.extra_info.update(row)
    recorder.add("fanout_throughput", row)
