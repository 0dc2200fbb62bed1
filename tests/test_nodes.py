"""Several ``orderflow serve`` nodes on one PostgreSQL schema and one Redis.

Each test starts its nodes as child processes (``python -m orderflow
serve``) on a fresh PostgreSQL schema, with a Redis channel prefix of its
own, and connects ``orderflow.client.Screen``s to them over real loopback
sockets. The outage tests (marked ``fault``) run a redis-server of their
own, so that they can stop it, restart it or cut its connections. The
others use the shared Redis in ORDERFLOW_TEST_REDIS_URL.

Every screen records each change it applies and when (``ScreenLog``), so a
test can check that the screen saw every seq once and in order. Latency is
measured from the event's ``at``, which the committing node stamps inside
the transaction, to the moment the screen applied the event. Every process
runs on this host, so both times come from the same clock.

The nodes read the log every 2 s when Redis is silent (``--poll-interval
2``), or every 30 s where a test must tell a publication from a poll, so a
delivery well under that interval came through Redis. The test that kills
a node while Redis is up uses 0.2 s, because it measures no latency.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
import redis
from anyio import to_thread

from orderflow import Engine
from orderflow.client import HttpClient, Screen, ScreenChange
from orderflow.models import parse_time
from tests.conftest import service_url
from tests.pg_support import fresh_schema_url, with_options
from tests.redis_support import TemporaryRedis
from tests.server_support import ServerProcess, fnv1a_digest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LOCATION = "main"
ITEMS = [{"name": "Margherita", "quantity": 1, "station": "oven"}]
# The next state of an active order. READY goes back to PREPARING (a recall),
# so an order can take any number of transitions and stay active.
NEXT_STATE = {
    "PENDING": "CONFIRMED",
    "CONFIRMED": "PREPARING",
    "PREPARING": "READY",
    "READY": "PREPARING",
}

POLL_INTERVAL = 2.0
FAILOVER_POLL_INTERVAL = 0.2
# With a 30 s poll and no writes of its own, a node reads the log within a
# second of a commit for two reasons only. A publication (an event or a
# notice) came, or a resuming screen requested a seq the node has not read.
SLOW_POLL_INTERVAL = 30.0
NOTICE_BOUND = 1.0
# The size cap for publications in the notice test, in bytes.
PUBLICATION_CAP = 1024

# Bounded waits, in seconds. They are upper limits, not expected times.
STARTUP_TIMEOUT = 20.0
SETTLE_TIMEOUT = 20.0
HEALTH_TIMEOUT = 15.0

# While Redis is healthy, events from another node must reach a screen much
# sooner than the next poll would read them.
HEALTHY_P50_BOUND = 0.25
HEALTHY_MAX_BOUND = 1.0
RECOVERED_BOUND = 0.5
# Convergence by polling: the feed of node B reads the log at most one poll
# interval after the last publication it heard. The bound is two intervals
# plus 0.5 s for the log read on PostgreSQL, the WebSocket hop and the
# scheduling of four busy processes on a 2-core machine.
POLL_CONVERGENCE_BOUND = 2 * POLL_INTERVAL + 0.5


# Nodes.


class Node:
    """One ``orderflow serve`` child process; ``ServerProcess`` collects its log."""

    def __init__(self, name: str, server: ServerProcess) -> None:
        self.name = name
        self.server = server
        self.url = server.url

    @property
    def log(self) -> list[str]:
        return self.server.stderr_text().splitlines()

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def running(self) -> bool:
        return self.server.process.poll() is None

    def kill(self) -> int:
        """Send SIGKILL to the node's pid and return its exit status."""
        os.kill(self.pid, signal.SIGKILL)
        return self.server.process.wait(10)

    def finish(self) -> None:
        """Wait for the node to exit (SIGKILL after 15 s) and close its pipes."""
        try:
            self.server.process.wait(15)
        except subprocess.TimeoutExpired:
            self.server.kill()
        self.server.stderr_text()
        for stream in (self.server.process.stdout, self.server.process.stderr):
            if stream is not None:
                stream.close()


class Cluster:
    """The nodes of one test, all on one database. ``stop`` ends each one by its pid."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.nodes: list[Node] = []

    def start(self, broker_url: str, count: int, *, poll_interval: float) -> list[Node]:
        """Start ``count`` nodes at the same time and wait until each one listens."""
        arguments = ["--poll-interval", str(poll_interval)]
        with ThreadPoolExecutor(count) as pool:
            futures = [
                pool.submit(ServerProcess, self.database_url, broker_url, extra_args=arguments)
                for _ in range(count)
            ]
        started: list[Node] = []
        failures: list[BaseException] = []
        for future in futures:
            error = future.exception()
            if error is not None:
                failures.append(error)
                continue
            node = Node(f"node{len(self.nodes)}", future.result())
            self.nodes.append(node)
            started.append(node)
        if failures:
            raise failures[0]
        return started

    def stop(self) -> None:
        """Send SIGTERM to every running node, wait for each to exit and print its log."""
        for node in self.nodes:
            if node.running:
                node.server.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.finish()
            # pytest shows this only for a test that failed.
            print(f"--- {node.name} (pid {node.pid}, {node.url}) log tail ---")
            print("\n".join(node.log[-60:]))


# Fixtures.


@pytest.fixture
def database() -> Iterator[str]:
    base = service_url("ORDERFLOW_TEST_POSTGRES_URL", "PostgreSQL")
    with fresh_schema_url(base) as url:
        # Three nodes and the test share the server with other test runs.
        yield with_options(url, pool_max="4")


@pytest.fixture
def redis_url() -> str:
    return service_url("ORDERFLOW_TEST_REDIS_URL", "Redis")


@pytest.fixture
def private_redis(redis_url: str, tmp_path: Path) -> Iterator[TemporaryRedis]:
    with TemporaryRedis(tmp_path) as server:
        yield server


@pytest.fixture
def cluster(database: str) -> Iterator[Cluster]:
    nodes = Cluster(database)
    try:
        yield nodes
    finally:
        nodes.stop()


def broker_url(redis_base: str, **options: str) -> str:
    """Return a broker URL on ``redis_base`` with a channel prefix of this test's own."""
    prefix = "orderflow_test_" + secrets.token_hex(6)
    return with_options(redis_base, channel_prefix=prefix, **options)


def channel_of(broker: str) -> str:
    """Return the Redis channel of the test location for a broker URL from ``broker_url``."""
    prefix = parse_qs(urlsplit(broker).query)["channel_prefix"][0]
    return f"{prefix}:events:{LOCATION}"


async def start_nodes(
    cluster: Cluster, broker: str, count: int, poll_interval: float
) -> list[Node]:
    return await to_thread.run_sync(
        partial(cluster.start, broker, count, poll_interval=poll_interval)
    )


# Screens and what they saw.


@dataclass(slots=True)
class Seen:
    kind: str
    seq: int
    at: float  # time.time() when the screen applied the change
    event: Mapping[str, Any] | None


@dataclass
class ScreenLog:
    """Every change one screen applied, with the wall-clock time it applied it."""

    node: str
    changes: list[Seen] = field(default_factory=list)

    def __call__(self, change: ScreenChange) -> None:
        self.changes.append(Seen(change.kind, change.seq, time.time(), change.event))

    def applied_at(self, seq: int) -> float:
        """Return when the screen applied event ``seq`` (or a snapshot at it)."""
        for seen in self.changes:
            if seen.seq == seq:
                return seen.at
        raise KeyError(f"the screen on {self.node} never reached seq {seq}")

    def latencies(self, start: int = 0) -> list[float]:
        """Return seconds from each event's ``at`` to the screen applying it.

        Only changes from index ``start`` on count, and only events that
        another node committed (the tests send the committing node's name
        as the actor).
        """
        result = []
        for seen in self.changes[start:]:
            if seen.event is None:
                continue
            if seen.event["actor"] == self.node:
                continue
            result.append(seen.at - parse_time(seen.event["at"]).timestamp())
        return result


@dataclass
class Watched:
    screen: Screen
    log: ScreenLog


async def open_screens(
    stack: AsyncExitStack, targets: Sequence[tuple[str, Sequence[str]]]
) -> list[Watched]:
    """Open one screen per ``(node name, URLs)`` on ``stack`` and wait for each snapshot."""
    watched = []
    for index, (node, urls) in enumerate(targets):
        log = ScreenLog(node)
        screen = await stack.enter_async_context(
            Screen(list(urls), on_change=log, name=f"screen{index}@{node}")
        )
        watched.append(Watched(screen, log))
    for item in watched:
        await item.screen.wait_until(lambda mirror: mirror.epoch is not None, STARTUP_TIMEOUT)
    return watched


def assert_saw_every_seq(item: Watched, head: int) -> None:
    """Check one snapshot first, then every event after it to ``head``, once and in order."""
    changes = item.log.changes
    assert changes[0].kind == "snapshot"
    assert [seen.kind for seen in changes].count("snapshot") == 1
    start = changes[0].seq
    assert [seen.seq for seen in changes[1:]] == list(range(start + 1, head + 1))


def assert_matches(item: Watched, reference: Mapping[str, Any]) -> None:
    """Check a screen's mirror against ``GET /orders/active`` or a database snapshot."""
    mirror = item.screen.mirror
    assert mirror.epoch == reference["epoch"]
    assert mirror.last == reference["head"]
    assert mirror.orders == {order["id"]: order for order in reference["orders"]}
    assert mirror.states() == {o["id"]: (o["state"], o["version"]) for o in reference["orders"]}
    assert mirror.digest == reference["digest"]


def read_database(url: str) -> dict[str, Any]:
    """Return the snapshot of the test location, read from PostgreSQL in one transaction."""
    with Engine.open(url) as engine:
        return engine.snapshot(LOCATION).to_dict()


async def settle(
    watched: Sequence[Watched],
    clients: Sequence[HttpClient],
    database: str,
    timeout: float = SETTLE_TIMEOUT,
) -> dict[str, Any]:
    """Wait for every screen to reach the database head; check them against every node.

    Returns the database snapshot the screens were checked against.
    """
    expected = await to_thread.run_sync(read_database, database)
    assert expected["digest"] == fnv1a_digest((o["id"], o["version"]) for o in expected["orders"])
    for item in watched:
        try:
            await item.screen.wait_for_seq(expected["head"], timeout)
        except TimeoutError:
            pytest.fail(
                f"{item.screen.name} on {item.screen.url} is at seq {item.screen.mirror.last}, "
                f"not at the database head {expected['head']}, after {timeout} s"
            )
    for client in clients:
        active = await client.active(LOCATION)
        for item in watched:
            assert_matches(item, active)
    for item in watched:
        assert_matches(item, expected)
        assert_saw_every_seq(item, expected["head"])
    return expected


# HTTP and Redis.


async def move(
    client: HttpClient, order: Mapping[str, Any], to: str, actor: str, **extra: Any
) -> dict[str, Any]:
    """Send one transition with the order's version and check that it committed (200)."""
    body = {"to": to, "expected_version": order["version"], "actor": actor, **extra}
    response = await client.request("POST", f"/orders/{order['id']}/transitions", body)
    assert response.status == 200, response.body
    result: dict[str, Any] = response.json()
    return result


async def health(client: HttpClient) -> tuple[int, dict[str, Any]]:
    response = await client.request("GET", "/healthz")
    document: dict[str, Any] = response.json()
    return response.status, document


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05
) -> bool:
    """Await ``check()`` until it returns True or until ``timeout`` seconds have passed.

    Returns whether ``check()`` returned True before the deadline.
    """
    deadline = anyio.current_time() + timeout
    while True:
        if await check():
            return True
        if anyio.current_time() >= deadline:
            return False
        await anyio.sleep(interval)


async def statuses_are(clients: Sequence[HttpClient], status: str) -> bool:
    for client in clients:
        _, document = await health(client)
        if document["status"] != status:
            return False
    return True


def subscriber_count(client: redis.Redis, channel: str) -> int:
    counts = dict(client.pubsub_numsub(channel))
    return int(counts.get(channel.encode(), 0))


async def wait_subscribers(client: redis.Redis, channel: str, count: int) -> None:
    """Wait until ``count`` connections (one per node) are subscribed to ``channel``."""

    async def subscribed() -> bool:
        return await to_thread.run_sync(subscriber_count, client, channel) == count

    assert await eventually(subscribed, STARTUP_TIMEOUT), (
        f"{channel} has {await to_thread.run_sync(subscriber_count, client, channel)} "
        f"subscribers, expected {count}"
    )


class ChannelRecorder:
    """Every message on one Redis channel, received by a connection of the test's own."""

    def __init__(self, url: str, channel: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=5)
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(channel)
        confirmed = self._pubsub.get_message(timeout=5)
        if confirmed is None or confirmed["type"] != "subscribe":
            raise RuntimeError(f"Redis did not confirm the subscription to {channel}")
        self.messages: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="channel recorder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None and message["type"] == "message":
                self.messages.append(message["data"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# 1. Three nodes, concurrent writers, every screen in step.

# Each order follows one of these paths. The last two leave it active.
PATHS = (
    ("CONFIRMED", "PREPARING", "READY", "COMPLETED"),
    ("CANCELLED",),
    ("CONFIRMED", "PREPARING", "READY", "PREPARING", "READY"),
    ("CONFIRMED", "PREPARING"),
)
WORKERS = 9
ORDERS_PER_WORKER = 4


async def work(clients: Sequence[HttpClient], names: Sequence[str], worker: int) -> None:
    """Create orders on one node and move each one through the other nodes in turn."""
    home = worker % len(clients)
    for index in range(ORDERS_PER_WORKER):
        order = await clients[home].create_order(
            ITEMS, actor=names[home], meta={"worker": worker, "index": index}
        )
        for step, state in enumerate(PATHS[(worker + index) % len(PATHS)]):
            node = (home + 1 + step) % len(clients)
            extra = {"reason": "guest left"} if state == "CANCELLED" else {}
            order = await move(clients[node], order, state, names[node], **extra)


@pytest.mark.anyio
async def test_three_nodes_in_step(cluster: Cluster, redis_url: str, database: str) -> None:
    broker = broker_url(redis_url)
    nodes = await start_nodes(cluster, broker, 3, POLL_INTERVAL)
    names = [node.name for node in nodes]

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(HttpClient(node.url)) for node in nodes]
        targets = [(node.name, [node.url]) for node in nodes for _ in range(2)]
        watched = await open_screens(stack, targets)
        with closing(redis.Redis.from_url(redis_url)) as control:
            await wait_subscribers(control, channel_of(broker), len(nodes))

        # A create retried on the other nodes with its idempotency key
        # returns the first result and writes nothing.
        first, *retries = [
            await client.create_order(ITEMS, actor=names[0], idempotency_key="till-1-0001")
            for client in clients
        ]

        async with anyio.create_task_group() as group:
            for worker in range(WORKERS):
                group.start_soon(work, clients, names, worker)

        expected = await settle(watched, clients, database)
        for client in clients:
            status, document = await health(client)
            assert status == 200
            assert document["status"] == "ok"

    latencies = [value for item in watched for value in item.log.latencies()]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"commit-to-screen latency on another node: p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
        f"{len(latencies)} samples, head {expected['head']}"
    )
    assert retries == [first, first]
    events_of_first = [
        seen.seq
        for seen in watched[0].log.changes
        if seen.event is not None and seen.event["order_id"] == first["id"]
    ]
    assert len(events_of_first) == 1
    assert expected["head"] > WORKERS * ORDERS_PER_WORKER
    assert expected["orders"]
    assert all(item.screen.connections == 1 for item in watched)
    assert p50 < HEALTHY_P50_BOUND
    assert max(latencies) < HEALTHY_MAX_BOUND


# 2. Redis stops in the middle of a burst, and comes back.

COMMITS_BEFORE_STOP = 5
COMMITS_WHILE_DOWN = 8
MAX_BURST = 200


@pytest.mark.fault
@pytest.mark.anyio
async def test_redis_outage_converges(
    private_redis: TemporaryRedis, cluster: Cluster, database: str
) -> None:
    broker = broker_url(private_redis.url)
    node_a, node_b = await start_nodes(cluster, broker, 2, POLL_INTERVAL)
    pids = (node_a.pid, node_b.pid)

    async with AsyncExitStack() as stack:
        client_a = await stack.enter_async_context(HttpClient(node_a.url))
        client_b = await stack.enter_async_context(HttpClient(node_b.url))
        targets = [(node_a.name, [node_a.url])] + [(node_b.name, [node_b.url])] * 2
        watched = await open_screens(stack, targets)
        on_b = watched[1:]
        with closing(private_redis.client()) as control:
            await wait_subscribers(control, channel_of(broker), 2)
        orders = [
            await client_a.create_order(ITEMS, actor=node_a.name, meta={"table": table})
            for table in range(4)
        ]
        await settle(watched, [client_a, client_b], database)

        # The burst: Redis stops after a few commits, and more follow.
        stopped = anyio.Event()

        async def stop_redis() -> None:
            await to_thread.run_sync(private_redis.stop)
            stopped.set()

        committed_while_down = 0
        last_commit = 0.0
        async with anyio.create_task_group() as group:
            for turn in range(MAX_BURST):
                if turn == COMMITS_BEFORE_STOP:
                    group.start_soon(stop_redis)
                index = turn % len(orders)
                order = orders[index]
                orders[index] = await move(client_a, order, NEXT_STATE[order["state"]], node_a.name)
                last_commit = time.time()
                if stopped.is_set():
                    committed_while_down += 1
                    if committed_while_down == COMMITS_WHILE_DOWN:
                        break
        assert committed_while_down == COMMITS_WHILE_DOWN
        assert not private_redis.running

        # Screens on B converge by polling, and both nodes report degraded.
        reference = await client_a.active(LOCATION)
        for item in on_b:
            await item.screen.wait_for_seq(reference["head"], SETTLE_TIMEOUT)
        convergence = [item.log.applied_at(reference["head"]) - last_commit for item in on_b]
        for client in (client_a, client_b):
            assert await eventually(partial(statuses_are, [client], "degraded"), HEALTH_TIMEOUT)
            status, document = await health(client)
            assert status == 200
            assert document["storage"] == "ok"
            assert document["broker"] != "ok"
        await settle(watched, [client_a, client_b], database)

        # Redis returns on the same port; the nodes reconnect by themselves.
        port = private_redis.port
        restarted = time.monotonic()
        await to_thread.run_sync(private_redis.start)
        assert private_redis.port == port
        assert await eventually(partial(statuses_are, [client_a, client_b], "ok"), HEALTH_TIMEOUT)
        recovery = time.monotonic() - restarted
        with closing(private_redis.client()) as control:
            await wait_subscribers(control, channel_of(broker), 2)
        assert (node_a.pid, node_b.pid) == pids
        assert node_a.running
        assert node_b.running

        # Delivery is fast again: each event reaches B long before a poll.
        start = [len(item.log.changes) for item in on_b]
        for turn in range(5):
            order = orders[turn % len(orders)]
            orders[turn % len(orders)] = await move(
                client_a, order, NEXT_STATE[order["state"]], node_a.name
            )
            head = (await client_a.active(LOCATION))["head"]
            for item in on_b:
                await item.screen.wait_for_seq(head, SETTLE_TIMEOUT)
        recovered = [
            latency
            for item, first in zip(on_b, start, strict=True)
            for latency in item.log.latencies(first)
        ]
        await settle(watched, [client_a, client_b], database)

    print(
        f"outage: B screens converged {', '.join(f'{value:.2f}' for value in convergence)} s "
        f"after the last commit (poll interval {POLL_INTERVAL} s); health ok {recovery:.2f} s "
        f"after Redis restarted; latency after recovery max {max(recovered) * 1000:.1f} ms"
    )
    assert all(value <= POLL_CONVERGENCE_BOUND for value in convergence)
    assert all(item.screen.connections == 1 for item in watched)
    assert len(recovered) == 10
    assert max(recovered) < RECOVERED_BOUND


# 3. Redis drops the pub/sub connections.


@pytest.mark.fault
@pytest.mark.anyio
async def test_pubsub_kill_loses_nothing(
    private_redis: TemporaryRedis, cluster: Cluster, database: str
) -> None:
    broker = broker_url(private_redis.url)
    channel = channel_of(broker)
    node_a, node_b = await start_nodes(cluster, broker, 2, POLL_INTERVAL)

    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(HttpClient(node.url)) for node in (node_a, node_b)
        ]
        names = [node_a.name, node_b.name]
        targets = [(node.name, [node.url]) for node in (node_a, node_b)]
        watched = await open_screens(stack, targets)
        control = stack.enter_context(closing(private_redis.client()))
        await wait_subscribers(control, channel, 2)
        old_ids = {entry["id"] for entry in control.client_list(_type="pubsub")}
        orders = [
            await clients[0].create_order(ITEMS, actor=names[0], meta={"table": table})
            for table in range(4)
        ]

        killed = 0
        for turn in range(20):
            if turn == 10:
                killed = await to_thread.run_sync(
                    partial(control.client_kill_filter, _type="pubsub")
                )
            side = turn % 2
            order = orders[turn % len(orders)]
            orders[turn % len(orders)] = await move(
                clients[side], order, NEXT_STATE[order["state"]], names[side]
            )

        async def replaced() -> bool:
            entries = await to_thread.run_sync(partial(control.client_list, _type="pubsub"))
            ids = {entry["id"] for entry in entries}
            return len(ids) == 2 and not ids & old_ids

        assert await eventually(replaced, HEALTH_TIMEOUT)
        await wait_subscribers(control, channel, 2)
        await settle(watched, clients, database)

        # The new subscriptions deliver: an event from each node reaches
        # the other node's screen long before a poll.
        start = [len(item.log.changes) for item in watched]
        for side in (0, 1):
            order = orders[side]
            orders[side] = await move(clients[side], order, NEXT_STATE[order["state"]], names[side])
        await settle(watched, clients, database)
        after = [
            latency
            for item, first in zip(watched, start, strict=True)
            for latency in item.log.latencies(first)
        ]

    print(f"after CLIENT KILL: latency from the other node {[round(v, 3) for v in after]} s")
    assert killed == 2
    assert all(item.screen.connections == 1 for item in watched)
    assert len(after) == 2
    assert max(after) < RECOVERED_BOUND


# 4. A publication over the size cap travels as a notice.


@pytest.mark.anyio
async def test_large_event_as_notice(cluster: Cluster, redis_url: str, database: str) -> None:
    broker = broker_url(redis_url, max_publication_bytes=str(PUBLICATION_CAP))
    channel = channel_of(broker)
    node_a, node_b = await start_nodes(cluster, broker, 2, SLOW_POLL_INTERVAL)

    async with AsyncExitStack() as stack:
        client_a = await stack.enter_async_context(HttpClient(node_a.url))
        client_b = await stack.enter_async_context(HttpClient(node_b.url))
        targets = [(node_a.name, [node_a.url]), (node_b.name, [node_b.url])]
        watched = await open_screens(stack, targets)
        with closing(redis.Redis.from_url(redis_url)) as control:
            await wait_subscribers(control, channel, 2)
        recorder = await to_thread.run_sync(ChannelRecorder, redis_url, channel)
        try:
            small = await client_a.create_order(ITEMS, actor=node_a.name)
            note = "extra cheese, no basil; " * (2 * PUBLICATION_CAP // 24)
            large = await client_a.create_order(
                ITEMS, actor=node_a.name, meta={"table": 9, "note": note}
            )
            large = await move(client_a, large, "CONFIRMED", node_a.name)
            expected = await settle(watched, [client_a, client_b], database)

            async def recorded() -> bool:
                return len(recorder.messages) >= expected["head"]

            assert await eventually(recorded, SETTLE_TIMEOUT)
        finally:
            await to_thread.run_sync(recorder.close)
        events = await client_a.request("GET", f"/orders/{large['id']}/events")

    messages = [json.loads(message) for message in recorder.messages]
    latencies = watched[1].log.latencies()
    print(f"events via notice and log read reached node B after {latencies} s")
    assert "order" in messages[0]
    assert messages[0]["order"]["id"] == small["id"]
    assert all(len(json.dumps(event)) > PUBLICATION_CAP for event in events.json()["events"])
    assert messages[1:] == [
        {"notice": True, "location": LOCATION, "seq": 2},
        {"notice": True, "location": LOCATION, "seq": 3},
    ]
    assert watched[1].screen.mirror.orders[large["id"]]["meta"]["note"] == note
    assert len(latencies) == 3
    assert max(latencies) < NOTICE_BOUND


# 5. A node dies under its screens.

MAX_FAILOVER_COMMITS = 2000


@pytest.mark.anyio
async def test_node_death_resumes(cluster: Cluster, redis_url: str, database: str) -> None:
    broker = broker_url(redis_url)
    node_a, node_b, node_c = await start_nodes(cluster, broker, 3, FAILOVER_POLL_INTERVAL)
    survivors = (node_b, node_c)

    async with AsyncExitStack() as stack:
        writers = [await stack.enter_async_context(HttpClient(n.url)) for n in survivors]
        targets = [
            (node_a.name, [node_a.url, node_b.url, node_c.url]),
            (node_a.name, [node_a.url, node_c.url, node_b.url]),
            (node_b.name, [node_b.url]),
            (node_c.name, [node_c.url]),
        ]
        watched = await open_screens(stack, targets)
        roaming = watched[:2]
        with closing(redis.Redis.from_url(redis_url)) as control:
            await wait_subscribers(control, channel_of(broker), 3)
        orders = [
            await writers[table % 2].create_order(
                ITEMS, actor=survivors[table % 2].name, meta={"table": table}
            )
            for table in range(6)
        ]
        commits = 0
        # The writer stops at this many commits. Once the screens moved to
        # other nodes, the limit becomes 10 more commits.
        limit = MAX_FAILOVER_COMMITS

        async def write() -> None:
            nonlocal commits
            while commits < limit:
                side = commits % 2
                order = orders[commits % len(orders)]
                orders[commits % len(orders)] = await move(
                    writers[side], order, NEXT_STATE[order["state"]], survivors[side].name
                )
                commits += 1

        with anyio.fail_after(2 * SETTLE_TIMEOUT):
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                for item in roaming:
                    await item.screen.wait_for_seq(len(orders) + 10, SETTLE_TIMEOUT)
                status = await to_thread.run_sync(node_a.kill)
                for item in roaming:
                    await item.screen.wait_until(
                        lambda _, screen=item.screen: screen.connected and screen.connections == 2,
                        SETTLE_TIMEOUT,
                    )
                limit = commits + 10

        await settle(watched, writers, database)

    print(
        "after SIGKILL: screens resumed in "
        + ", ".join(f"{(item.screen.last_recovery or 0) * 1000:.1f} ms" for item in roaming)
    )
    assert status == -signal.SIGKILL
    for item in roaming:
        assert item.screen.last_outcome == "resumed"
        assert item.screen.url != node_a.url
        assert item.screen.connections == 2


@pytest.mark.fault
@pytest.mark.anyio
async def test_node_death_during_outage(
    private_redis: TemporaryRedis, cluster: Cluster, database: str
) -> None:
    """A screen moves from a node that is ahead to one that has not read the log yet."""
    broker = broker_url(private_redis.url)
    node_a, node_b = await start_nodes(cluster, broker, 2, SLOW_POLL_INTERVAL)

    async with AsyncExitStack() as stack:
        client_a = await stack.enter_async_context(HttpClient(node_a.url))
        client_b = await stack.enter_async_context(HttpClient(node_b.url))
        targets = [(node_a.name, [node_a.url, node_b.url]), (node_b.name, [node_b.url])]
        watched = await open_screens(stack, targets)
        roaming = watched[0]
        with closing(private_redis.client()) as control:
            await wait_subscribers(control, channel_of(broker), 2)
        orders = [
            await client_a.create_order(ITEMS, actor=node_a.name, meta={"table": table})
            for table in range(3)
        ]
        await settle(watched, [client_a, client_b], database)

        # Without Redis, node A's screen hears A's commits at once, and node B
        # would read them only at its next poll, 30 s later.
        await to_thread.run_sync(private_redis.stop)
        for index, order in enumerate(orders):
            orders[index] = await move(client_a, order, "CONFIRMED", node_a.name)
        head = (await client_a.active(LOCATION))["head"]
        await roaming.screen.wait_for_seq(head, SETTLE_TIMEOUT)
        behind = (await client_b.active(LOCATION))["head"]
        status = await to_thread.run_sync(node_a.kill)

        await roaming.screen.wait_until(
            lambda _: roaming.screen.connected and roaming.screen.connections == 2,
            SETTLE_TIMEOUT,
        )
        await settle(watched, [client_b], database)

    print(f"node B was at seq {behind} of {head} when the screen moved to it")
    assert behind < head
    assert status == -signal.SIGKILL
    assert roaming.screen.url == node_b.url
    assert roaming.screen.last_outcome == "resumed"
