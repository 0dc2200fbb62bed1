"""End-to-end recovery: every screen ends with exactly the database's active orders.

Hypothesis generates scenarios against a real server on loopback. They
interleave order creates and transitions (through the engine, over HTTP, and
several in one transaction) with publications the broker loses, screens that
drop their connection or go offline for a while, and screens that stop
reading. The server runs with short intervals and a subscriber queue of
three events, so a transaction of several events, or a poll that repairs
several lost publications at once, overflows the queue and the server sends
``resync``. A small replay buffer and ``max_replay`` make resumes read the
log or fall back to a snapshot.

At the end every screen, once it has caught up, must hold exactly the active
orders of the database (ids, states, versions), the same digest, and the
same as ``GET /orders/active``. No screen may ever have seen a gap, a digest
mismatch or a heartbeat ahead of the events it got, because the server
never sends those to a screen that reads in order.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orderflow.aio import AsyncEngine
from orderflow.broker import MemoryBroker
from orderflow.client import HttpClient, Mirror, Screen, ScreenChange
from orderflow.engine import Transaction
from orderflow.feed import FeedOptions
from orderflow.lifecycle import DEFAULT_LIFECYCLE
from orderflow.models import Event, Order, Snapshot
from orderflow.server import ServerConfig
from tests.server_support import running_server

pytestmark = pytest.mark.anyio

ITEMS = [{"name": "Diavola", "quantity": 1}]
SCREENS = 3
CATCH_UP_TIMEOUT = 5.0

SERVER_CONFIG = ServerConfig(
    heartbeat_interval=0.2,
    max_replay=12,
    feed=FeedOptions(
        poll_interval=0.05, head_check_interval=0.2, replay_buffer=6, subscriber_queue=3
    ),
)

# Reasons that a correct server never gives a screen that reads in order.
FORBIDDEN_REASONS = ("gap", "digest mismatch", "heartbeat announced")


class LossyBroker(MemoryBroker):
    """The in-process broker, losing the publications that the plan marks.

    ``plan`` lists, for each coming publication in turn, whether to drop it.
    Publications beyond the plan are delivered. ``publish`` runs in the
    engine's worker thread, hence the lock.
    """

    def __init__(self) -> None:
        super().__init__()
        self._plan: deque[bool] = deque()
        self._plan_lock = threading.Lock()
        self.dropped = 0

    def plan(self, drops: Iterable[bool]) -> None:
        with self._plan_lock:
            self._plan = deque(drops)

    def publish(self, event: Event) -> None:
        with self._plan_lock:
            drop = self._plan.popleft() if self._plan else False
            if drop:
                self.dropped += 1
        if not drop:
            super().publish(event)


class StallingScreen(Screen):
    """A screen whose reading can be stopped for a while, like a frozen tablet.

    NOTE: it overrides the private ``Screen._receive``, which every message
    passes through, because the client has no public pause.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, on_change=self._count, **kwargs)
        self.reading = anyio.Event()
        self.reading.set()
        self.snapshots = 0

    def _count(self, change: ScreenChange) -> None:
        if change.kind == "snapshot":
            self.snapshots += 1

    def stall(self) -> None:
        if self.reading.is_set():
            self.reading = anyio.Event()

    def resume_reading(self) -> None:
        self.reading.set()

    async def _receive(self, socket: Any) -> dict[str, Any]:
        await self.reading.wait()
        return await super()._receive(socket)


# Scenario steps.


@dataclass(frozen=True)
class Write:
    """Create, move or update an order. ``pick`` and ``choice`` select the order and the target."""

    kind: Literal["create", "move", "update"]
    pick: int
    choice: int
    over_http: bool
    drop: bool


@dataclass(frozen=True)
class Burst:
    """Several changes in one transaction. ``drops`` marks lost publications in turn."""

    changes: tuple[tuple[bool, int, int], ...]
    drops: tuple[bool, ...]


@dataclass(frozen=True)
class ScreenAction:
    """``drop`` the connection once, or toggle ``offline`` or ``stall`` on one screen."""

    action: Literal["drop", "offline", "stall"]
    screen: int


@dataclass(frozen=True)
class Idle:
    """Let the feed, the heartbeats and the reconnects run for a moment."""

    seconds: float


Step = Write | Burst | ScreenAction | Idle

writes = st.builds(
    Write,
    kind=st.sampled_from(["create", "move", "update"]),
    pick=st.integers(0, 30),
    choice=st.integers(0, 5),
    over_http=st.booleans(),
    drop=st.booleans(),
)
bursts = st.builds(
    Burst,
    changes=st.lists(
        st.tuples(st.booleans(), st.integers(0, 30), st.integers(0, 5)), min_size=2, max_size=6
    ).map(tuple),
    drops=st.lists(st.booleans(), min_size=6, max_size=6).map(tuple),
)
screen_actions = st.builds(
    ScreenAction,
    action=st.sampled_from(["drop", "offline", "stall"]),
    screen=st.integers(0, SCREENS - 1),
)
idles = st.builds(Idle, seconds=st.sampled_from([0.0, 0.02, 0.1]))
scenarios = st.lists(
    st.one_of(writes, writes, bursts, screen_actions, screen_actions, idles),
    min_size=1,
    max_size=30,
)


# Running a scenario.


class Scenario:
    """One example: a server, its screens, and the test's own list of active orders."""

    def __init__(
        self, engine: AsyncEngine, http: HttpClient, broker: LossyBroker, location: str
    ) -> None:
        self.engine = engine
        self.http = http
        self.broker = broker
        self.location = location
        self.active: dict[str, str] = {}
        self.offline: set[int] = set()

    def track(self, order_id: str, state: str) -> None:
        if DEFAULT_LIFECYCLE.is_active(state):
            self.active[order_id] = state
        else:
            self.active.pop(order_id, None)

    def move_for(self, pick: int, choice: int) -> tuple[str, str, str | None] | None:
        """Return (order id, target, reason) for a legal move, or None when nothing is active."""
        if not self.active:
            return None
        order_id = sorted(self.active)[pick % len(self.active)]
        targets = DEFAULT_LIFECYCLE.allowed_targets(self.active[order_id])
        target = targets[choice % len(targets)]
        reason = "customer left" if target == "CANCELLED" else None
        return order_id, target, reason

    async def write(self, step: Write) -> None:
        move = self.move_for(step.pick, step.choice) if step.kind == "move" else None
        self.broker.plan([step.drop])
        if step.kind == "update" and self.active:
            await self.update(step)
        elif move is None and step.over_http:
            created = await self.http.create_order(ITEMS, location=self.location)
            self.track(created["id"], created["state"])
        elif move is None:
            order = await self.engine.create(ITEMS, location=self.location)
            self.track(order.id, order.state)
        elif step.over_http:
            order_id, target, reason = move
            moved = await self.http.transition(order_id, target, reason=reason)
            self.track(moved["id"], moved["state"])
        else:
            order_id, target, reason = move
            order = await self.engine.transition(order_id, target, reason=reason)
            self.track(order.id, order.state)
        self.broker.plan([])

    async def update(self, step: Write) -> None:
        """Replace the meta of an active order: a new version in the same state."""
        order_id = sorted(self.active)[step.pick % len(self.active)]
        meta = {"table": step.choice}
        if step.over_http:
            response = await self.http.request("PATCH", f"/orders/{order_id}", {"meta": meta})
            assert response.status == 200, response.body
        else:
            await self.engine.update(order_id, meta=meta)

    async def burst(self, step: Burst) -> None:
        active = dict(self.active)
        location = self.location

        def run(transaction: Transaction) -> list[Order]:
            changed: list[Order] = []
            for create, pick, choice in step.changes:
                move = None if create else self.move_for(pick, choice)
                if move is None:
                    order = transaction.create(ITEMS, location=location)
                else:
                    order_id, target, reason = move
                    order = transaction.transition(order_id, target, reason=reason)
                changed.append(order)
                self.track(order.id, order.state)
            return changed

        self.broker.plan(step.drops)
        try:
            await self.engine.run_transaction(run)
        except BaseException:
            self.active = active
            raise
        finally:
            self.broker.plan([])


@dataclass
class ScreenReport:
    """What one screen held at the end of a scenario."""

    name: str
    caught_up: bool
    last: int
    epoch: str | None
    states: dict[str, tuple[str, int]]
    digest: str
    reasons: list[str]
    snapshots: int


@dataclass
class Outcome:
    truth: Snapshot
    served: dict[str, Any]
    screens: list[ScreenReport]
    lost_publications: int


async def run_scenario(database_url: str, steps: list[Step]) -> Outcome:
    """Run ``steps``, let every screen catch up and report each screen's state."""
    location = f"prop-{uuid.uuid4().hex[:12]}"
    broker = LossyBroker()
    async with (
        running_server(database_url, broker, config=SERVER_CONFIG) as running,
        HttpClient(running.url) as http,
    ):
        screens = [
            StallingScreen(
                running.url,
                location=location,
                silence_timeout=3.0,
                gap_grace=0.3,
                backoff_base=0.01,
                backoff_max=0.1,
                connect_timeout=3.0,
                name=f"screen-{index}",
            )
            for index in range(SCREENS)
        ]
        async with screens[0], screens[1], screens[2]:
            for screen in screens:
                await wait_connected(screen)

            scenario = Scenario(running.engine, http, broker, location)
            for step in steps:
                await apply_step(scenario, screens, step)

            for index, screen in enumerate(screens):
                screen.resume_reading()
                if index in scenario.offline:
                    screen.go_online()
            # The database's own view, read in one transaction. Nothing writes after it.
            truth = await running.engine.snapshot(location)
            reports = [await catch_up(screen, truth.head) for screen in screens]
            served = await http.active(location)
    return Outcome(truth, served, reports, broker.dropped)


async def wait_connected(screen: Screen) -> None:
    await screen.wait_until(lambda mirror: screen.connected, CATCH_UP_TIMEOUT)


def forbidden_reasons(reasons: list[str]) -> list[str]:
    return [reason for reason in reasons if any(word in reason for word in FORBIDDEN_REASONS)]


async def catch_up(screen: StallingScreen, head: int) -> ScreenReport:
    """Wait until ``screen`` is connected at ``head`` (bounded) and report its state.

    A forbidden reconnect reason ends the wait early, because a screen that
    keeps finding gaps may never catch up, and the test fails on it anyway.
    """

    def done(mirror: Mirror) -> bool:
        at_head = mirror.last >= head and screen.connected
        return at_head or bool(forbidden_reasons(screen.reconnect_reasons))

    with contextlib.suppress(TimeoutError):
        await screen.wait_until(done, CATCH_UP_TIMEOUT)
    caught_up = screen.mirror.last >= head and screen.connected
    mirror = screen.mirror
    return ScreenReport(
        screen.name,
        caught_up,
        mirror.last,
        mirror.epoch,
        mirror.states(),
        mirror.digest,
        list(screen.reconnect_reasons),
        screen.snapshots,
    )


async def apply_step(scenario: Scenario, screens: list[StallingScreen], step: Step) -> None:
    if isinstance(step, Write):
        await scenario.write(step)
    elif isinstance(step, Burst):
        await scenario.burst(step)
    elif isinstance(step, Idle):
        await anyio.sleep(step.seconds)
    else:
        screen = screens[step.screen]
        if step.action == "drop":
            screen.drop_connection()
        elif step.action == "stall":
            if screen.reading.is_set():
                event("a screen stopped reading")
                screen.stall()
            else:
                screen.resume_reading()
        elif step.screen in scenario.offline:
            scenario.offline.discard(step.screen)
            screen.go_online()
        else:
            event("a screen went offline")
            scenario.offline.add(step.screen)
            screen.go_offline()


def reason_kind(reason: str) -> str:
    for kind in ("slow_consumer", "dropped by the caller", "silent", "connect failed"):
        if kind in reason:
            return kind
    return "other"


# An example starts a server and three screens on loopback and runs up to 30
# steps in 10 to 500 ms, and most generated scenarios are short. So this test
# affords twice the profile's examples (80 under the ci profile) per database
# and backend, which took 8 to 15 s each on a 2-core machine.
@settings(
    max_examples=2 * settings().max_examples,
    # Examples share the test's database, but each uses a location of its
    # own, whose log, feed and screens are independent of the others.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=scenarios)
async def test_screens_match_database(
    database_url: str, anyio_backend: str, steps: list[Step]
) -> None:
    with anyio.fail_after(60):
        outcome = await run_scenario(database_url, steps)

    truth = outcome.truth
    expected = {order.id: (order.state, order.version) for order in truth.orders}
    served = outcome.served
    served_states = {order["id"]: (order["state"], order["version"]) for order in served["orders"]}
    assert served["head"] == truth.head
    assert served_states == expected
    assert served["digest"] == truth.digest

    for screen in outcome.screens:
        assert forbidden_reasons(screen.reasons) == [], screen.name
        recent = screen.reasons[-5:]
        assert screen.caught_up, (
            f"{screen.name} stuck at seq {screen.last} of {truth.head}: {recent}"
        )
        assert screen.last == truth.head, screen.name
        assert screen.epoch == truth.epoch, screen.name
        assert screen.states == expected, screen.name
        assert screen.digest == truth.digest, screen.name

    if outcome.lost_publications:
        event("lost publications")
    for screen in outcome.screens:
        if screen.snapshots > 1:
            event("snapshot after a reconnect")
        for reason in screen.reasons:
            event(f"reconnect: {reason_kind(reason)}")
