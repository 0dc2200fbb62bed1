"""Recovery: the time from a screen's reconnect to a mirror consistent with the server.

The server is an orderflow node in its own process (``benchmarks._node``:
the same ``Server`` as ``orderflow serve``, SQLite and the memory broker),
so the screen and the server share only the loopback interface, as a
kitchen screen on another device would. The screen is
``orderflow.client.Screen`` running in this process. The figure is its own
``last_recovery``, which runs from the start of the new connection to the
moment its mirror reached the head the server announced: a loaded
snapshot, or the last replayed event of a resume.

Each round takes the screen offline, commits the missed events in one
transaction on the node (which replies once its feed has applied them),
and brings the screen back. ``resume`` reconnects with ``since``.
``snapshot`` clears the mirror's epoch first, so the reconnect requests a
snapshot. The missed events move active orders between READY and
PREPARING, so the number of active orders stays the same.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from benchmarks._children import Child
from benchmarks._support import (
    DESIGN_RECOVERY_MS,
    SIZES,
    Recorder,
    Sizes,
    block_percentile,
    goal_check,
    percentile,
    seed,
    with_goal,
)
from orderflow import Engine
from orderflow.client import Screen
from orderflow.demo import wait_for

GOAL_MS = 5.0
GOAL_CELL = (200, 100, "resume")
TIMEOUT = 30.0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_recovery":
        return
    sizes = SIZES[metafunc.config.getoption("--bench-size")]
    cases = [
        (active, missed, mode)
        for active in sizes.recovery_actives
        for missed in sizes.recovery_missed
        for mode in ("resume", "snapshot")
    ]
    metafunc.parametrize(
        ("active", "missed", "mode"),
        cases,
        ids=[f"active={a}-missed={m}-{mode}" for a, m, mode in cases],
    )


def location_of(active: int) -> str:
    return f"recovery-{active}"


@pytest.fixture(scope="module")
def portal() -> Iterator[BlockingPortal]:
    """An asyncio event loop in a thread of its own, for the screens."""
    with start_blocking_portal("asyncio") as running:
        yield running


@pytest.fixture(scope="module")
def node(sizes: Sizes, workdir: Path) -> Iterator[Child]:
    """An orderflow node serving one location per number of active orders."""
    url = f"sqlite:///{workdir / 'recovery.db'}?synchronous=normal"
    with Engine.open(url) as engine:
        for active in sizes.recovery_actives:
            seed(engine, [location_of(active)], active)
    arguments = ["--db", url, "--serve"]
    for active in sizes.recovery_actives:
        arguments += ["--location", location_of(active)]
    child = Child("benchmarks._node", arguments, workdir / "recovery-node.log")
    try:
        child.wait_ready()
        yield child
    finally:
        child.close()


async def _connect(screen: Screen) -> None:
    await screen.wait_until(lambda _: screen.connected, TIMEOUT)


async def _go_offline(screen: Screen, snapshot: bool) -> None:
    screen.go_offline()
    await wait_for(lambda: not screen.connected, TIMEOUT)
    if snapshot:
        # Without an epoch the screen reconnects without since: a snapshot.
        screen.mirror.epoch = None
    screen.last_recovery = None


async def _come_back(screen: Screen, head: int) -> None:
    screen.go_online()
    # Polling every millisecond, not Screen.wait_until, which would wake
    # this task after every event and slow the screen it measures.
    await wait_for(lambda: screen.last_recovery is not None and screen.mirror.last >= head, TIMEOUT)


def _active_orders(base_url: str, location: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/orders/active?location={location}") as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def test_recovery(
    benchmark: Any,
    sizes: Sizes,
    recorder: Recorder,
    node: Child,
    portal: BlockingPortal,
    active: int,
    missed: int,
    mode: str,
) -> None:
    assert node.ready is not None
    url = node.ready["url"]
    location = location_of(active)
    goal_cell = (active, missed, mode) == GOAL_CELL
    rounds = sizes.recovery_goal_rounds if goal_cell else sizes.recovery_rounds[missed]
    recoveries: list[float] = []
    problems: list[str] = []

    def setup() -> tuple[tuple[int], dict[str, Any]]:
        portal.call(_go_offline, screen, mode == "snapshot")
        head = screen.mirror.last
        if missed:
            head = node.call({"cmd": "burst", "location": location, "count": missed})["seq"]
        return (head,), {}

    def target(head: int) -> None:
        portal.call(_come_back, screen, head)

    def teardown(head: int) -> None:
        if screen.last_recovery is not None:
            recoveries.append(screen.last_recovery * 1000.0)
        expected = "resumed" if mode == "resume" else "snapshot"
        if screen.last_outcome != expected:
            problems.append(f"reconnected with a {screen.last_outcome}, not a {expected}")
        if screen.mirror.last != head:
            problems.append(f"mirror at seq {screen.mirror.last}, not the head {head}")

    screen = Screen(url, location=location, name=f"recovery-{active}-{missed}-{mode}")
    with portal.wrap_async_context_manager(screen):
        portal.call(_connect, screen)
        benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=rounds, warmup_rounds=1)
        database = _active_orders(url, location)

    recoveries = recoveries[1:]
    assert not problems, problems[:5]
    assert screen.mirror.last == database["head"]
    assert screen.mirror.digest == database["digest"]
    assert len(screen.mirror.orders) == active

    p50 = block_percentile(recoveries, 0.5)
    p99 = block_percentile(recoveries, 0.99)
    row: dict[str, Any] = {
        "active": active,
        "missed": missed,
        "mode": mode,
        "p50_ms": p50,
        "p99_ms": p99,
        "samples": len(recoveries),
        "design_ratio": p99 / DESIGN_RECOVERY_MS,
        "pooled_p99_ms": percentile(recoveries, 0.99),
        "recoveries_ms": recoveries,
    }
    floor = FLOOR.get("p50_ms")
    if floor:
        row["floor_ratio"] = p50 / floor
    if (active, missed, mode) == (min(sizes.recovery_actives), 0, "resume"):
        FLOOR["p50_ms"] = p50
        row["floor_ratio"] = 1.0
    if goal_cell:
        met, miss = goal_check(p99, GOAL_MS, at_least=False)
        with_goal(row, f"p99 <= {GOAL_MS:g} ms", met, miss)
    benchmark.extra_info.update(row)
    recorder.add("recovery", row)


# The floor: a resume with nothing to replay on the smallest location, the
# first case that runs. Every other p50 is shown as a multiple of it.
FLOOR: dict[str, float] = {}
