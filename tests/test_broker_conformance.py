"""The conformance suite that every broker adapter must pass.

Each test runs once per adapter (ids ``memory`` and ``redis``). The Redis
variant uses the server in ORDERFLOW_TEST_REDIS_URL with a channel prefix
of its own, so tests never hear each other or anyone else on that server.
A Redis subscription becomes active only once the server confirmed it.
Tests therefore call ``case.wait_subscribed()`` after subscribing and before
they publish. For the in-process broker that call returns at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from orderflow._inbox import Inbox, InboxClosed
from orderflow.broker import Broker, MemoryBroker, Publication, broker_from_url
from tests.conftest import REQUIRE_SERVICES, service_url
from tests.redis_support import collect, collect_async, make_event

SUBSCRIBE_TIMEOUT = 5.0


@dataclass
class BrokerCase:
    """A started broker under test and how to wait until its subscriptions are active."""

    broker: Broker

    def wait_subscribed(self) -> None:
        wait = getattr(self.broker, "wait_subscribed", None)
        if wait is not None and not wait(SUBSCRIBE_TIMEOUT):
            pytest.fail(f"{self.broker.url} did not confirm subscriptions in {SUBSCRIBE_TIMEOUT} s")


def with_channel_prefix(url: str, prefix: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&channel_prefix={prefix}" if parts.query else f"channel_prefix={prefix}"
    return urlunsplit(parts._replace(query=query))


@pytest.fixture(scope="session")
def redis_base_url() -> str:
    """The shared Redis server's URL, checked once to respond to PING."""
    import redis

    url = service_url("ORDERFLOW_TEST_REDIS_URL", "Redis")
    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        message = f"Redis at ORDERFLOW_TEST_REDIS_URL={url} does not respond to PING: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()
    return url


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def case(request: pytest.FixtureRequest) -> Iterator[BrokerCase]:
    broker: Broker
    if request.param == "memory":
        broker = MemoryBroker()
    else:
        base = request.getfixturevalue("redis_base_url")
        broker = broker_from_url(with_channel_prefix(base, f"test-{uuid.uuid4().hex}"))
    broker.start()
    try:
        yield BrokerCase(broker)
    finally:
        broker.close()


def seqs(publications: list[Publication]) -> list[int]:
    return [publication.seq for publication in publications]


def test_round_trip_keeps_event(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(["main"])
    case.wait_subscribed()
    event = make_event("main", 1)

    case.broker.publish(event)
    received = collect(subscription, 1)

    assert received == [Publication("main", 1, event)]


def test_order_per_publisher(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(["main"])
    case.wait_subscribed()

    for seq in range(1, 1001):
        case.broker.publish(make_event("main", seq))
    received = collect(subscription, 1000)

    assert seqs(received) == list(range(1, 1001))


def test_fan_out(case: BrokerCase) -> None:
    subscriptions = [case.broker.subscribe(["main"]) for _ in range(5)]
    case.wait_subscribed()

    for seq in range(1, 51):
        case.broker.publish(make_event("main", seq))

    for subscription in subscriptions:
        assert seqs(collect(subscription, 50)) == list(range(1, 51))


def test_location_filter(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(["a"])
    case.wait_subscribed()

    # Interleaved, so a wrongly delivered "b" would arrive before the last "a".
    for seq in range(1, 21):
        case.broker.publish(make_event("b", seq))
        case.broker.publish(make_event("a", seq))
    received = collect(subscription, 20)

    assert {publication.location for publication in received} == {"a"}
    assert seqs(received) == list(range(1, 21))


def test_subscribe_all_locations(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(None)
    case.wait_subscribed()

    for location in ("a", "b", "c"):
        case.broker.publish(make_event(location, 1))
    received = collect(subscription, 3)

    assert sorted(publication.location for publication in received) == ["a", "b", "c"]


def test_all_and_named_together(case: BrokerCase) -> None:
    everything = case.broker.subscribe(None)
    named = case.broker.subscribe(["a"])
    case.wait_subscribed()

    case.broker.publish(make_event("a", 1))
    case.broker.publish(make_event("b", 1))
    case.broker.publish(make_event("a", 2))

    assert [(p.location, p.seq) for p in collect(everything, 3)] == [("a", 1), ("b", 1), ("a", 2)]
    assert [(p.location, p.seq) for p in collect(named, 2)] == [("a", 1), ("a", 2)]


def test_shared_inbox(case: BrokerCase) -> None:
    inbox: Inbox[Publication] = Inbox()
    first = case.broker.subscribe(["a"], inbox=inbox)
    second = case.broker.subscribe(["b"], inbox=inbox)
    case.wait_subscribed()

    case.broker.publish(make_event("a", 1))
    case.broker.publish(make_event("b", 1))
    received = collect(first, 2)

    assert sorted(publication.location for publication in received) == ["a", "b"]
    first.close()
    assert not inbox.closed
    case.broker.publish(make_event("b", 2))
    assert seqs(collect(second, 1)) == [2]


def test_resubscribe_after_last_close(case: BrokerCase) -> None:
    first = case.broker.subscribe(["main"])
    case.wait_subscribed()
    first.close()

    second = case.broker.subscribe(["main"])
    case.wait_subscribed()
    case.broker.publish(make_event("main", 1))

    assert seqs(collect(second, 1)) == [1]


def test_close_subscription_idempotent(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(["main"])

    subscription.close()
    subscription.close()

    with pytest.raises(InboxClosed):
        subscription.wait(1.0)


def test_close_broker_idempotent(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(["main"])

    case.broker.close()
    case.broker.close()

    with pytest.raises(InboxClosed):
        subscription.wait(1.0)


def test_publish_after_close(case: BrokerCase) -> None:
    inbox: Inbox[Publication] = Inbox()
    case.broker.subscribe(["main"], inbox=inbox)
    case.wait_subscribed()
    case.broker.close()

    case.broker.publish(make_event("main", 1))

    assert inbox.wait(0.2) == []


def test_health_ok(case: BrokerCase) -> None:
    case.broker.subscribe(["main"])
    case.wait_subscribed()

    assert case.broker.health().ok


def test_wait_times_out_empty(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(["main"])
    started = time.monotonic()

    received = subscription.wait(0.1)

    assert received == []
    assert time.monotonic() - started >= 0.09


def test_wait_returns_batch(case: BrokerCase) -> None:
    subscription = case.broker.subscribe(["main"])
    case.wait_subscribed()

    for seq in (1, 2, 3):
        case.broker.publish(make_event("main", seq))

    assert seqs(collect(subscription, 3)) == [1, 2, 3]


@pytest.mark.anyio
async def test_receive_async(case: BrokerCase, anyio_backend: str) -> None:
    subscription = case.broker.subscribe(["main"])
    case.wait_subscribed()

    for seq in range(1, 101):
        case.broker.publish(make_event("main", seq))
    received = await collect_async(subscription, 100)

    assert seqs(received) == list(range(1, 101))


@pytest.mark.anyio
async def test_receive_async_closed(case: BrokerCase, anyio_backend: str) -> None:
    subscription = case.broker.subscribe(["main"])

    case.broker.close()

    with pytest.raises(InboxClosed):
        await subscription.receive()
