"""Tests of the Redis broker beyond the conformance suite: URLs, limits and outages.

Server tests run against a redis-server of their own (``TemporaryRedis``),
which they stop, restart or cut connections on. The brokers use short
timings (PING after 0.2 s of silence, reconnect backoff capped at 0.5 s) so
that an outage shows within about a second.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from orderflow import Engine
from orderflow.aio import AsyncEngine
from orderflow.broker import Publication, broker_from_url
from orderflow.broker.redis import RedisBroker, backoff_delay
from orderflow.errors import BrokerError, ConfigurationError
from orderflow.feed import FeedOptions
from tests.redis_support import TemporaryRedis, collect, make_event, wait_until

FAST = {"ping_interval": 0.2, "min_reconnect_delay": 0.05, "max_reconnect_delay": 0.5}
OUTAGE_TIMEOUT = 5.0
RECOVERY_TIMEOUT = 10.0
PASSWORD = "Kitchen-Secret-42"

OpenBroker = Callable[..., RedisBroker]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TemporaryRedis]:
    with TemporaryRedis(tmp_path) as running:
        yield running


@pytest.fixture
def open_broker() -> Iterator[OpenBroker]:
    """Start brokers with the fast test timings and close them after the test."""
    brokers: list[RedisBroker] = []

    def open_one(url: str, **tuning: Any) -> RedisBroker:
        broker = RedisBroker.from_url(url, **{**FAST, **tuning})
        brokers.append(broker)
        broker.start()
        return broker

    yield open_one
    for broker in brokers:
        broker.close()


@pytest.fixture
def redis_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="orderflow.broker.redis")
    return caplog


def degraded(broker: RedisBroker, part: str = "") -> Callable[[], bool]:
    """Return a check that health is degraded, and names ``part`` if given."""

    def check() -> bool:
        health = broker.health()
        return not health.ok and part in health.detail

    return check


# URLs and options; no server needed.


def test_url_hides_password() -> None:
    broker = RedisBroker.from_url(f"redis://:{PASSWORD}@127.0.0.1:6390/0")

    assert broker.url == "redis://:***@127.0.0.1:6390/0"


def test_url_hides_password_with_username() -> None:
    broker = RedisBroker.from_url(f"rediss://cashier:{PASSWORD}@127.0.0.1:6390/2?channel_prefix=x")

    assert broker.url == "rediss://cashier:***@127.0.0.1:6390/2?channel_prefix=x"


def test_url_options_split() -> None:
    broker = RedisBroker.from_url(
        "redis://127.0.0.1:6390/3?channel_prefix=site1&max_publication_bytes=4096&socket_timeout=3"
    )
    connection_options = broker._client.connection_pool.connection_kwargs

    assert broker.channel("main") == "site1:events:main"
    assert broker.max_publication_bytes == 4096
    assert connection_options["socket_timeout"] == 3.0
    assert connection_options["db"] == 3
    assert "channel_prefix" not in connection_options
    assert "max_publication_bytes" not in connection_options


def test_url_defaults() -> None:
    broker = RedisBroker.from_url("redis://127.0.0.1:6390/0")

    assert broker.channel("main") == "orderflow:events:main"
    assert broker.max_publication_bytes == 65536


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("colour=blue", "'colour'"),
        ("channel_prefix=a*b", "channel_prefix"),
        ("channel_prefix=", "channel_prefix"),
        ("channel_prefix=a%20b", "channel_prefix"),
        ("max_publication_bytes=big", "max_publication_bytes"),
        ("max_publication_bytes=100", "max_publication_bytes"),
        ("channel_prefix=a&channel_prefix=b", "channel_prefix"),
        ("db=two", "db"),
    ],
    ids=[
        "unknown",
        "glob-prefix",
        "empty-prefix",
        "space-prefix",
        "limit-text",
        "limit-small",
        "twice",
        "redis-value",
    ],
)
def test_url_invalid_option(query: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisBroker.from_url(f"redis://:{PASSWORD}@127.0.0.1:6390/0?{query}")

    assert named in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_url_wrong_scheme() -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        RedisBroker.from_url("http://127.0.0.1:6390/0")


def test_url_invalid_port() -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis broker URL"):
        RedisBroker.from_url("redis://127.0.0.1:port/0")


def test_broker_from_url_picks_redis() -> None:
    broker = broker_from_url("rediss://127.0.0.1:6390/0")

    assert isinstance(broker, RedisBroker)
    assert not broker.in_process


def test_backoff_bounds() -> None:
    rng = random.Random(7)

    delays = [backoff_delay(attempt, 0.1, 5.0, rng) for attempt in range(40)]

    assert min(delays) >= 0.05
    assert max(delays) <= 5.0
    assert delays[0] <= 0.1
    assert min(delays[6:]) >= 2.5


def test_queue_bound_before_start() -> None:
    broker = RedisBroker.from_url("redis://127.0.0.1:6390/0", max_queued=5)

    for seq in range(1, 9):
        broker.publish(make_event("main", seq))

    assert broker.dropped == 3
    broker.close()


def test_health_before_start() -> None:
    broker = RedisBroker.from_url("redis://127.0.0.1:6390/0")

    assert "not started" in broker.health().detail
    broker.close()


def test_start_after_close() -> None:
    broker = RedisBroker.from_url("redis://127.0.0.1:6390/0")
    broker.close()

    with pytest.raises(BrokerError, match="closed"):
        broker.start()


# A healthy server.


@pytest.mark.redis
def test_oversized_becomes_notice(server: TemporaryRedis, open_broker: OpenBroker) -> None:
    broker = open_broker(server.url + "?max_publication_bytes=1024")
    subscription = broker.subscribe(["main"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    small, large, after = (
        make_event("main", 1),
        make_event("main", 2, notes="x" * 2000),
        make_event("main", 3),
    )

    for event in (small, large, after):
        broker.publish(event)
    received = collect(subscription, 3)

    assert received == [
        Publication("main", 1, small),
        Publication("main", 2, None),
        Publication("main", 3, after),
    ]
    assert broker.notices == 1


@pytest.mark.redis
def test_undecodable_message(
    server: TemporaryRedis, open_broker: OpenBroker, redis_log: pytest.LogCaptureFixture
) -> None:
    broker = open_broker(server.url)
    subscription = broker.subscribe(["main"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    channel = broker.channel("main")

    with server.client() as raw:
        raw.publish(channel, b"\xffnot json")
        raw.publish(channel, b'{"seq": 7}')
        raw.publish(channel, b'{"notice": true, "location": "main", "seq": "8"}')
    event = make_event("main", 9)
    broker.publish(event)
    received = collect(subscription, 2)

    assert received == [Publication("main", 7, None), Publication("main", 9, event)]
    assert "undecodable message" in redis_log.text


@pytest.mark.redis
def test_listener_stops_and_restarts(server: TemporaryRedis, open_broker: OpenBroker) -> None:
    broker = open_broker(server.url)
    first = broker.subscribe(["main"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)

    first.close()

    assert wait_until(lambda: not broker.listening, OUTAGE_TIMEOUT)
    with server.client() as admin:
        assert admin.client_list(_type="pubsub") == []
    second = broker.subscribe(["main"])
    assert broker.listening
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    broker.publish(make_event("main", 1))
    assert [p.seq for p in collect(second, 1)] == [1]


# Outages.


@pytest.mark.redis
@pytest.mark.fault
def test_stop_degrades_health(server: TemporaryRedis, open_broker: OpenBroker) -> None:
    broker = open_broker(server.url)
    broker.subscribe(["main"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    assert broker.health().ok

    server.stop()

    assert wait_until(degraded(broker, "listener"), OUTAGE_TIMEOUT)
    assert wait_until(degraded(broker, "publisher"), OUTAGE_TIMEOUT)


@pytest.mark.redis
@pytest.mark.fault
def test_publish_fast_during_outage(server: TemporaryRedis, open_broker: OpenBroker) -> None:
    broker = open_broker(server.url)
    server.stop()
    assert wait_until(degraded(broker, "publisher"), OUTAGE_TIMEOUT)
    events = [make_event("main", seq) for seq in range(1, 20_001)]

    started = time.perf_counter()
    for event in events:
        broker.publish(event)
    average = (time.perf_counter() - started) / len(events)

    # Measured at 0.8 to 1.1 microseconds per call on the 2-core development machine.
    assert average < 100e-6
    assert wait_until(lambda: broker.dropped == len(events), OUTAGE_TIMEOUT)


@pytest.mark.redis
@pytest.mark.fault
def test_restart_restores_delivery(server: TemporaryRedis, open_broker: OpenBroker) -> None:
    broker = open_broker(server.url)
    subscription = broker.subscribe(["main"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    server.stop()
    assert wait_until(degraded(broker, "listener"), OUTAGE_TIMEOUT)

    server.start()

    assert wait_until(lambda: broker.health().ok, RECOVERY_TIMEOUT)
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    broker.publish(make_event("main", 1))
    assert [p.seq for p in collect(subscription, 1)] == [1]


@pytest.mark.redis
@pytest.mark.fault
def test_outage_logged(
    server: TemporaryRedis, open_broker: OpenBroker, redis_log: pytest.LogCaptureFixture
) -> None:
    broker = open_broker(server.url)
    broker.subscribe(["main"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    server.stop()
    assert wait_until(degraded(broker, "publisher"), OUTAGE_TIMEOUT)
    assert wait_until(degraded(broker, "listener"), OUTAGE_TIMEOUT)
    server.start()
    assert wait_until(lambda: broker.health().ok, RECOVERY_TIMEOUT)

    messages = [record.getMessage() for record in redis_log.records]

    assert any("listener lost its connection" in m and server.url in m for m in messages)
    assert any("listener reconnected" in m for m in messages)
    assert any("publisher cannot reach" in m for m in messages)
    assert any("publisher reaches" in m for m in messages)


@pytest.mark.redis
@pytest.mark.fault
def test_client_kill_reconnects(
    server: TemporaryRedis, open_broker: OpenBroker, redis_log: pytest.LogCaptureFixture
) -> None:
    broker = open_broker(server.url)
    subscription = broker.subscribe(["main"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)

    with server.client() as admin:
        killed = admin.client_kill_filter(_type="pubsub")

    assert killed == 1
    assert wait_until(lambda: broker.reconnects == 1, RECOVERY_TIMEOUT)
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    broker.publish(make_event("main", 1))
    assert [p.seq for p in collect(subscription, 1)] == [1]
    assert "listener lost its connection" in redis_log.text


@pytest.mark.redis
@pytest.mark.fault
def test_start_while_down(
    tmp_path: Path, open_broker: OpenBroker, redis_log: pytest.LogCaptureFixture
) -> None:
    server = TemporaryRedis(tmp_path)
    try:
        broker = open_broker(server.url)
        subscription = broker.subscribe(["main"])
        assert wait_until(degraded(broker, "listener"), OUTAGE_TIMEOUT)
        assert "listener cannot connect" in redis_log.text

        server.start()

        assert wait_until(lambda: broker.health().ok, RECOVERY_TIMEOUT)
        assert broker.wait_subscribed(OUTAGE_TIMEOUT)
        broker.publish(make_event("main", 1))
        assert [p.seq for p in collect(subscription, 1)] == [1]
    finally:
        server.kill()


@pytest.mark.redis
@pytest.mark.fault
def test_password_never_shown(
    tmp_path: Path, open_broker: OpenBroker, redis_log: pytest.LogCaptureFixture
) -> None:
    with TemporaryRedis(tmp_path, password=PASSWORD) as server:
        broker = open_broker(server.url)
        subscription = broker.subscribe(["main"])
        assert broker.wait_subscribed(OUTAGE_TIMEOUT)
        broker.publish(make_event("main", 1))
        assert [p.seq for p in collect(subscription, 1)] == [1]

        server.stop()
        assert wait_until(degraded(broker, "publisher"), OUTAGE_TIMEOUT)
        outage_detail = broker.health().detail
        server.start()
        assert wait_until(lambda: broker.health().ok, RECOVERY_TIMEOUT)
        broker.close()

    assert PASSWORD not in broker.url
    assert PASSWORD not in outage_detail
    assert "redis://:***@127.0.0.1" in redis_log.text
    assert PASSWORD not in redis_log.text


@pytest.mark.redis
@pytest.mark.fault
def test_wrong_password(
    tmp_path: Path, open_broker: OpenBroker, redis_log: pytest.LogCaptureFixture
) -> None:
    with TemporaryRedis(tmp_path, password=PASSWORD) as server:
        wrong = server.url.replace(PASSWORD, "Wrong-Secret-17")
        broker = open_broker(wrong)
        broker.subscribe(["main"])

        assert wait_until(degraded(broker, "AuthenticationError"), OUTAGE_TIMEOUT)
        assert "Wrong-Secret-17" not in redis_log.text


@pytest.mark.redis
def test_wait_subscribed_needs_confirmation(
    server: TemporaryRedis, open_broker: OpenBroker
) -> None:
    # A long PING interval, so that the paused server does not look dead.
    broker = open_broker(server.url, ping_interval=5.0)
    broker.subscribe(["a"])
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    with server.client() as admin:
        admin.client_pause(800)

    later = broker.subscribe(["b"])

    assert not broker.wait_subscribed(0.3)
    assert broker.wait_subscribed(OUTAGE_TIMEOUT)
    broker.publish(make_event("b", 1))
    assert [p.seq for p in collect(later, 1)] == [1]


@pytest.mark.redis
@pytest.mark.anyio
async def test_feed_hears_other_engine(
    server: TemporaryRedis, tmp_path: Path, anyio_backend: str
) -> None:
    database = f"sqlite:///{tmp_path / 'orders.db'}"
    # The feed reads the log only after 30 s of silence, so within the
    # 5 s deadline the events can only come through Redis.
    options = FeedOptions(poll_interval=30.0, head_check_interval=60.0)
    with Engine.open(database, server.url) as writer:
        async with (
            AsyncEngine.open(database, server.url, feed_options=options) as reader,
            reader.subscribe("main") as stream,
        ):
            broker = reader.sync.broker
            assert isinstance(broker, RedisBroker)
            assert broker.wait_subscribed(OUTAGE_TIMEOUT)

            for _ in range(20):
                writer.create([{"name": "Margherita", "quantity": 1}])
            received: list[int] = []
            with anyio.fail_after(OUTAGE_TIMEOUT):
                async for event in stream:
                    received.append(event.seq)
                    if len(received) == 20:
                        break

    assert received == list(range(1, 21))
