"""``orderflow replay``: replay the pizza-place data set against a server, with screens attached.

Each order of ``order_lines.csv`` is created at its original time offset
from the first order, divided by the speed. It then goes through the
restaurant lifecycle (CONFIRMED, PREPARING, READY, COMPLETED) with kitchen
delays that depend only on the number of pizzas. A seeded RNG picks the
orders that are cancelled with a reason or recalled from READY to
PREPARING. It also picks the moments when a screen drops its connection or
goes offline for a while, so two runs with the same seed make the same
requests.

Speed is in data seconds per real second: 60 replays one minute of the
restaurant's day per second. Speed 0 means as fast as possible: no waiting
at all, only the bound on orders in flight.

The replay ends at the time of the last order. Kitchen steps that fall
after it are not made, so the orders still in the kitchen at that moment
stay active, and the final check compares screens that hold real orders.
That check waits (bounded) for every screen to reach the head, then
compares each screen's mirror with ``GET /orders/active``.

Server and client modules are imported inside the functions that use
them, so ``orderflow --help`` does not load them.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

import anyio

from .demo import (
    LocalServer,
    ScreenFactory,
    compare_mirror,
    local_server,
    percentile,
    quiet_library_logs,
    single_error,
    wait_for,
)
from .errors import ConfigurationError, OrderflowError

if TYPE_CHECKING:
    from .client import HttpClient, Screen, ScreenChange
    from .importer import PizzaOrder

__all__ = [
    "Disruption",
    "KitchenTimes",
    "OrderPlan",
    "ProgressPrinter",
    "ReplayPlan",
    "ReplayProgress",
    "ReplayReport",
    "ScreenResult",
    "Step",
    "add_command",
    "build_plan",
    "format_replay_report",
    "kitchen_times",
    "parse_speed",
    "render_progress",
    "run_replay",
]

logger = logging.getLogger(__name__)

CANCEL_REASONS = (
    "customer left before paying",
    "payment declined",
    "out of dough",
    "duplicate order",
)
RECALL_REASON = "sent back by the customer"

# Stages an order can be cancelled from, each with the step that would
# have moved it on.
_CANCEL_STAGES = (("PENDING", "CONFIRMED"), ("CONFIRMED", "PREPARING"), ("PREPARING", "READY"))

_ERRORS_KEPT = 10


# The plan, which is pure and reproducible from the orders and the seed.


@dataclass(frozen=True, slots=True)
class KitchenTimes:
    """Delays of one order in data seconds, each from the step before it."""

    confirm: float
    prepare: float
    cook: float
    pickup: float
    recall: float
    remake: float


def kitchen_times(pizzas: int) -> KitchenTimes:
    """Return the delays of an order of ``pizzas`` pizzas, in data seconds.

    The till confirms after 1 minute and the kitchen starts 2 minutes later.
    Cooking takes 6 minutes plus 1 per pizza, and the customer collects 3
    minutes after READY. A recall comes 1 minute after READY, and the remake
    takes 3 minutes plus 30 seconds per pizza. These are round guesses for a
    small pizza place, not figures from the data set.
    """
    return KitchenTimes(
        confirm=60.0,
        prepare=120.0,
        cook=360.0 + 60.0 * pizzas,
        pickup=180.0,
        recall=60.0,
        remake=180.0 + 30.0 * pizzas,
    )


@dataclass(frozen=True, slots=True)
class Step:
    """One transition of a planned order, ``at`` data seconds after the first order."""

    at: float
    to: str
    actor: str
    reason: str | None = None
    recall: bool = False


@dataclass(frozen=True, slots=True)
class OrderPlan:
    """One order of the data set and the transitions the replay makes for it.

    ``start`` is in data seconds after the first order. ``steps`` leaves
    out the steps after the end of the replay.
    """

    source: PizzaOrder
    start: float
    steps: tuple[Step, ...]

    @property
    def pizzas(self) -> int:
        return sum(item.quantity for item in self.source.items)

    @property
    def finished(self) -> bool:
        """Whether the order reaches a terminal state within the replay."""
        return bool(self.steps) and self.steps[-1].to in ("COMPLETED", "CANCELLED")


@dataclass(frozen=True, slots=True)
class Disruption:
    """A screen losing its connection just before the order with that index starts.

    ``drop`` reconnects at once. ``offline`` stays away until the order with
    index ``until`` starts, or until the end of the replay.
    """

    screen: int
    kind: Literal["drop", "offline"]
    until: int


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """Everything a replay will do, in data time. ``end`` is the last order's start."""

    orders: tuple[OrderPlan, ...]
    disruptions: Mapping[int, tuple[Disruption, ...]]
    end: float


def build_plan(
    orders: Sequence[PizzaOrder],
    *,
    seed: int,
    screens: int,
    cancel_rate: float = 0.02,
    recall_rate: float = 0.03,
    disruption_rate: float = 0.02,
) -> ReplayPlan:
    """Plan the transitions of ``orders`` and the screen disruptions.

    ``orders`` must be in time order. Each rate is a probability per order.
    The RNG draws the same number of values for every order, so changing a
    rate changes which orders are picked but not the rest of the plan.
    """
    rng = random.Random(seed)
    if not orders:
        return ReplayPlan((), {}, 0.0)

    first = orders[0].ordered_at
    end = (orders[-1].ordered_at - first).total_seconds()
    plans: list[OrderPlan] = []
    disruptions: dict[int, list[Disruption]] = {}
    for index, order in enumerate(orders):
        cancel = rng.random() < cancel_rate
        stage = rng.randrange(len(_CANCEL_STAGES))
        reason = rng.choice(CANCEL_REASONS)
        recall = rng.random() < recall_rate
        start = (order.ordered_at - first).total_seconds()
        pizzas = sum(item.quantity for item in order.items)
        steps = _order_steps(start, kitchen_times(pizzas), cancel, stage, reason, recall)
        plans.append(OrderPlan(order, start, tuple(s for s in steps if s.at <= end)))

        disrupt = rng.random() < disruption_rate
        screen = rng.randrange(screens) if screens else 0
        kind: Literal["drop", "offline"] = "offline" if rng.random() < 0.5 else "drop"
        away = rng.randint(5, 40)
        if disrupt and screens:
            disruptions.setdefault(index, []).append(Disruption(screen, kind, index + away))

    frozen = {index: tuple(found) for index, found in disruptions.items()}
    return ReplayPlan(tuple(plans), frozen, end)


def _order_steps(
    start: float, times: KitchenTimes, cancel: bool, stage: int, reason: str, recall: bool
) -> list[Step]:
    confirmed = start + times.confirm
    preparing = confirmed + times.prepare
    ready = preparing + times.cook
    steps = [
        Step(confirmed, "CONFIRMED", "till"),
        Step(preparing, "PREPARING", "kitchen"),
        Step(ready, "READY", "kitchen"),
    ]
    if cancel:
        # Cancel at the moment the order would have left its stage.
        steps_before = steps[:stage]
        return [*steps_before, Step(steps[stage].at, "CANCELLED", "till", reason)]

    last = ready
    if recall:
        recalled = ready + times.recall
        last = recalled + times.remake
        steps += [
            Step(recalled, "PREPARING", "counter", RECALL_REASON, recall=True),
            Step(last, "READY", "kitchen"),
        ]
    steps.append(Step(last + times.pickup, "COMPLETED", "counter"))
    return steps


def parse_speed(text: str) -> float:
    """Parse ``--speed``: ``max`` or a number of data seconds per real second, 0 for max."""
    if text.strip().lower() == "max":
        return 0.0
    try:
        speed = float(text)
    except ValueError:
        raise ConfigurationError(
            f"invalid speed {text!r}; use a number of data seconds per second, such as 60, or max"
        ) from None
    if not math.isfinite(speed) or speed < 0:
        raise ConfigurationError(f"invalid speed {text!r}; use a number from 0, or max")
    return speed


# Results.


@dataclass(frozen=True, slots=True)
class ReplayProgress:
    """How far a running replay is: orders done of the total, after ``elapsed`` seconds."""

    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Orders done per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ScreenResult:
    """One screen at the end of a replay.

    ``problems`` lists every way its mirror differed from ``GET /orders/active``.
    """

    name: str
    last: int
    active_orders: int
    digest: str
    reconnects: int
    drops: int
    offline_periods: int
    problems: tuple[str, ...]

    @property
    def matched(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """The counts and measurements of one ``run_replay`` call.

    ``elapsed`` is the time in seconds from the first order's start to the
    last order's last step. The latencies run from an event's ``at``
    timestamp, which the engine takes inside the write transaction just
    before the commit, to the moment a screen applied the event. Events a
    screen caught up on after a planned ``go_offline`` are left out
    (``latency_skipped``), because their delay is the planned absence.
    At max speed the replay, the in-process server and the screens share one
    process, so the latencies include waiting behind the replay's own requests.
    """

    source: str
    first_order: datetime
    last_order: datetime
    speed: float
    seed: int
    server_url: str
    database: str | None
    broker: str | None
    orders: int
    created: int
    transitions: int
    cancelled: int
    recalled: int
    left_active: int
    failed: int
    errors: tuple[str, ...]
    elapsed: float
    latencies_ms: tuple[float, ...]
    latency_skipped: int
    head: int
    screens: tuple[ScreenResult, ...]

    @property
    def ok(self) -> bool:
        """Whether every API call succeeded and every screen matched the database."""
        return self.failed == 0 and all(screen.matched for screen in self.screens)

    @property
    def orders_per_second(self) -> float:
        return self.created / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def transitions_per_second(self) -> float:
        return self.transitions / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def latency_p50_ms(self) -> float | None:
        return percentile(self.latencies_ms, 0.5)

    @property
    def latency_p99_ms(self) -> float | None:
        return percentile(self.latencies_ms, 0.99)


# The run.


@dataclass
class _Counts:
    done: int = 0
    created: int = 0
    transitions: int = 0
    cancelled: int = 0
    recalled: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def record_error(self, message: str) -> None:
        self.failed += 1
        if len(self.errors) < _ERRORS_KEPT:
            self.errors.append(message)
        logger.warning("replay: %s", message)


class _ScreenWatch:
    """A screen with its disruptions and its commit-to-screen latencies."""

    def __init__(self, screen: Screen) -> None:
        self.screen = screen
        self.latencies: list[float] = []
        self.skipped = 0
        self.drops = 0
        self.offline_periods = 0
        self.back_at: int | None = None
        self._offline_since: float | None = None
        self._last_period: tuple[float, float] | None = None
        screen.on_change = self.on_change

    @property
    def offline(self) -> bool:
        return self._offline_since is not None

    def on_change(self, change: ScreenChange) -> None:
        if change.kind != "event" or change.event is None:
            return
        applied = time.time()
        committed = datetime.fromisoformat(change.event["at"]).timestamp()
        if self._missed_while_offline(committed):
            self.skipped += 1
            return
        self.latencies.append(applied - committed)

    def _missed_while_offline(self, committed: float) -> bool:
        # Only the latest absence is checked: a screen catches up on one
        # absence long before its next one starts.
        if self._offline_since is not None and committed >= self._offline_since:
            return True
        period = self._last_period
        return period is not None and period[0] <= committed <= period[1]

    def drop(self) -> None:
        if not self.offline:
            self.drops += 1
            self.screen.drop_connection()

    def go_offline(self, until: int | None = None) -> None:
        """Take the screen offline until ``go_online``, planned for order index ``until``."""
        if not self.offline:
            self.back_at = until
            self.offline_periods += 1
            self._offline_since = time.time()
            self.screen.go_offline()

    def go_online(self) -> None:
        if self._offline_since is not None:
            self._last_period = (self._offline_since, time.time())
            self._offline_since = None
            self.back_at = None
            self.screen.go_online()


def _read_orders(order_lines: Path, pizza_types: Path | None, days: int | None) -> list[PizzaOrder]:
    """Read the orders to replay; a blocking call, run in a worker thread."""
    from .importer import read_pizza_orders, slice_by_days

    if not order_lines.is_file():
        raise ConfigurationError(f"{order_lines} is not a file; give the path of order_lines.csv")
    if pizza_types is None:
        pizza_types = order_lines.with_name("pizza_types.csv")
        if not pizza_types.is_file():
            raise ConfigurationError(
                f"no pizza_types.csv beside {order_lines}; pass its path with --types"
            )

    orders = read_pizza_orders(order_lines, pizza_types)
    return list(slice_by_days(orders, days) if days is not None else orders)


def _has_reached(screen: Screen, seq: int) -> bool:
    """Return whether ``screen`` is connected and its mirror has applied ``seq``."""
    return screen.connected and screen.mirror.last >= seq


@asynccontextmanager
async def _target(
    url: str | None, database: str | None, broker: str
) -> AsyncIterator[LocalServer | None]:
    """Start a server in-process unless ``url`` names a running one (then yield None)."""
    if url is None:
        async with local_server(database, broker) as server:
            yield server
        return
    yield None


async def run_replay(
    order_lines: str | Path,
    *,
    pizza_types: str | Path | None = None,
    days: int | None = None,
    speed: float = 0.0,
    screens: int = 3,
    url: str | None = None,
    database: str | None = None,
    broker: str = "memory://",
    seed: int = 1,
    location: str = "main",
    concurrency: int = 16,
    cancel_rate: float = 0.02,
    recall_rate: float = 0.03,
    disruption_rate: float = 0.02,
    catch_up_timeout: float = 30.0,
    on_progress: Callable[[ReplayProgress], None] | None = None,
    screen_factory: ScreenFactory | None = None,
) -> ReplayReport:
    """Replay the pizza-place orders against a server and check every screen at the end.

    Runs against the server at ``url``, or else one started in-process on
    ``database`` (default: a temporary SQLite file) and ``broker``. At most
    ``concurrency`` orders are in flight at once; when all are busy, the
    next order waits, even past its planned time. ``on_progress`` is called
    about every 0.1 s while orders run, and once at the end.

    Raises ``ConfigurationError`` for invalid options or a missing file,
    ``ImportFormatError`` for a malformed data file, and ``OSError`` when
    the server cannot be reached. API errors while orders run do not raise:
    they are counted in the report, which is then not ``ok``.
    """
    from .client import HttpClient, Screen

    _check_options(speed, screens, concurrency, days, url, database)
    rates = {
        "cancel_rate": cancel_rate,
        "recall_rate": recall_rate,
        "disruption_rate": disruption_rate,
    }
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"{name} must be from 0 to 1, not {rate}")

    lines_path = Path(order_lines)
    types_path = Path(pizza_types) if pizza_types is not None else None

    orders = await anyio.to_thread.run_sync(_read_orders, lines_path, types_path, days)
    if not orders:
        raise ConfigurationError(f"no orders found in {lines_path}")
    plan = build_plan(
        orders,
        seed=seed,
        screens=screens,
        cancel_rate=cancel_rate,
        recall_rate=recall_rate,
        disruption_rate=disruption_rate,
    )
    factory: ScreenFactory = screen_factory or Screen

    counts = _Counts()
    with single_error():
        async with _target(url, database, broker) as local:
            server_url = local.url if local is not None else str(url).rstrip("/")
            async with HttpClient(server_url) as client, AsyncExitStack() as stack:
                await client.health()
                watches = []
                for number in range(1, screens + 1):
                    screen = factory(server_url, location=location, name=f"screen-{number}")
                    watches.append(_ScreenWatch(await stack.enter_async_context(screen)))
                for watch in watches:
                    await wait_for(partial(_has_reached, watch.screen, 0), catch_up_timeout)

                elapsed = await _drive(
                    plan, client, watches, counts, speed, location, concurrency, on_progress
                )
                head, results = await _check_screens(client, watches, location, catch_up_timeout)

    latencies = tuple(latency * 1000.0 for watch in watches for latency in watch.latencies)
    return ReplayReport(
        source=str(lines_path),
        first_order=orders[0].ordered_at,
        last_order=orders[-1].ordered_at,
        speed=speed,
        seed=seed,
        server_url=server_url,
        database=local.database if local else None,
        broker=local.broker if local else None,
        orders=len(plan.orders),
        created=counts.created,
        transitions=counts.transitions,
        cancelled=counts.cancelled,
        recalled=counts.recalled,
        left_active=sum(1 for order in plan.orders if not order.finished),
        failed=counts.failed,
        errors=tuple(counts.errors),
        elapsed=elapsed,
        latencies_ms=latencies,
        latency_skipped=sum(watch.skipped for watch in watches),
        head=head,
        screens=tuple(results),
    )


def _check_options(
    speed: float,
    screens: int,
    concurrency: int,
    days: int | None,
    url: str | None,
    database: str | None,
) -> None:
    if not math.isfinite(speed) or speed < 0:
        raise ConfigurationError(
            f"speed must be a number from 0 (as fast as possible), not {speed}"
        )
    if screens < 1:
        raise ConfigurationError(f"screens must be at least 1, not {screens}")
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be at least 1, not {concurrency}")
    if days is not None and days < 1:
        raise ConfigurationError(f"days must be at least 1, not {days}")
    if url is not None and database is not None:
        raise ConfigurationError(
            "give either a server URL or a database URL: a running server uses its own database"
        )
    if url is not None and not url.startswith("http://"):
        raise ConfigurationError(f"invalid server URL {url!r}; use http://host:port")


async def _drive(
    plan: ReplayPlan,
    client: HttpClient,
    watches: list[_ScreenWatch],
    counts: _Counts,
    speed: float,
    location: str,
    concurrency: int,
    on_progress: Callable[[ReplayProgress], None] | None,
) -> float:
    """Run every planned order and disruption; return the seconds it took."""
    limiter = anyio.CapacityLimiter(concurrency)
    total = len(plan.orders)
    started = anyio.current_time()

    def progress() -> ReplayProgress:
        return ReplayProgress(counts.done, total, anyio.current_time() - started)

    async def report_progress() -> None:
        while on_progress is not None:
            on_progress(progress())
            await anyio.sleep(0.1)

    async def at_data_time(seconds: float) -> None:
        if speed > 0:
            await anyio.sleep_until(started + seconds / speed)

    async def run_order(order: OrderPlan, token: object) -> None:
        try:
            await _run_order(order, client, counts, location, at_data_time)
        finally:
            counts.done += 1
            limiter.release_on_behalf_of(token)

    async with anyio.create_task_group() as reporter:
        reporter.start_soon(report_progress)
        async with anyio.create_task_group() as orders:
            for index, order in enumerate(plan.orders):
                _disrupt(index, plan, watches)
                await at_data_time(order.start)
                token = object()
                await limiter.acquire_on_behalf_of(token)
                orders.start_soon(run_order, order, token)
        elapsed = anyio.current_time() - started
        reporter.cancel_scope.cancel()

    if on_progress is not None:
        on_progress(progress())
    return elapsed


def _disrupt(index: int, plan: ReplayPlan, watches: list[_ScreenWatch]) -> None:
    """Bring back the screens whose absence ends at order ``index``, then disrupt others."""
    for watch in watches:
        if watch.back_at is not None and index >= watch.back_at:
            watch.go_online()
    for disruption in plan.disruptions.get(index, ()):
        watch = watches[disruption.screen]
        if disruption.kind == "drop":
            watch.drop()
        else:
            watch.go_offline(until=disruption.until)


async def _run_order(
    order: OrderPlan,
    client: HttpClient,
    counts: _Counts,
    location: str,
    at_data_time: Callable[[float], Awaitable[None]],
) -> None:
    source = order.source
    step_name = "create"
    try:
        created = await client.create_order(
            [item.to_dict() for item in source.items],
            location=location,
            meta={
                "source_order": source.source_id,
                "ordered_at": source.ordered_at.isoformat(),
                "total": str(source.total),
            },
            actor="till",
        )
        counts.created += 1
        order_id = created["id"]
        version = created["version"]
        for step in order.steps:
            step_name = step.to
            await at_data_time(step.at)
            moved = await client.transition(
                order_id,
                step.to,
                expected_version=version,
                reason=step.reason,
                actor=step.actor,
            )
            version = moved["version"]
            counts.transitions += 1
            counts.cancelled += step.to == "CANCELLED"
            counts.recalled += step.recall
    except (
        OrderflowError,
        OSError,
        TimeoutError,
        anyio.EndOfStream,
        anyio.BrokenResourceError,
    ) as exc:
        counts.record_error(
            f"order {source.source_id} of the data set: {step_name} failed: "
            f"{type(exc).__name__}: {exc}"
        )


async def _check_screens(
    client: HttpClient, watches: list[_ScreenWatch], location: str, timeout: float
) -> tuple[int, list[ScreenResult]]:
    """Wait (bounded) for every screen to reach the head, then compare each with the database.

    NOTE: this assumes nothing else writes to the location during the
    check; another writer on a shared server can make a screen look behind.
    """
    for watch in watches:
        watch.go_online()
    head = (await client.active(location))["head"]
    deadline = anyio.current_time() + timeout
    late: set[str] = set()
    for watch in watches:
        screen = watch.screen
        try:
            await wait_for(
                partial(_has_reached, screen, head),
                max(0.0, deadline - anyio.current_time()),
            )
        except TimeoutError:
            late.add(screen.name)

    active = await client.active(location)
    results = []
    for watch in watches:
        screen = watch.screen
        problems = compare_mirror(screen.mirror, active)
        if screen.name in late:
            problems.insert(0, f"did not reach seq {head} and connect within {timeout:g} s")
        results.append(
            ScreenResult(
                name=screen.name,
                last=screen.mirror.last,
                active_orders=len(screen.mirror.orders),
                digest=screen.mirror.digest,
                reconnects=max(0, screen.connections - 1),
                drops=watch.drops,
                offline_periods=watch.offline_periods,
                problems=tuple(problems),
            )
        )
    return int(active["head"]), results


# Output.


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def format_replay_report(report: ReplayReport, *, max_problems: int = 3) -> str:
    """Return the report as short plain text, with one line per screen."""
    speed = "max speed" if report.speed == 0 else f"speed {report.speed:g} (data s per s)"
    if report.database is None:
        server = f"server {report.server_url} (already running)"
    else:
        server = f"server {report.server_url} on {report.database}, broker {report.broker}"
    lines = [
        f"replayed {report.orders} orders of {Path(report.source).name} "
        f"({report.first_order:%Y-%m-%d %H:%M} to {report.last_order:%Y-%m-%d %H:%M}) "
        f"at {speed}, seed {report.seed}",
        f"{server}, {len(report.screens)} screens",
        f"  {report.created} orders created and {report.transitions} transitions in "
        f"{report.elapsed:.1f} s: {report.orders_per_second:.1f} orders/s, "
        f"{report.transitions_per_second:.1f} transitions/s",
        f"  {report.cancelled} cancelled, {report.recalled} recalled, {report.left_active} "
        f"still active at the time of the last order, {report.failed} failed API calls",
    ]
    lines.extend(f"  FAILED: {error}" for error in report.errors)
    lines.append(
        f"  commit to screen (event 'at' to the moment a screen applied it): "
        f"p50 {_ms(report.latency_p50_ms)}, p99 {_ms(report.latency_p99_ms)} over "
        f"{len(report.latencies_ms)} deliveries ({report.latency_skipped} caught up after "
        "going offline are left out)"
    )
    for screen in report.screens:
        away = (
            f"{_plural(screen.reconnects, 'reconnect')} ({_plural(screen.drops, 'drop')}, "
            f"{_plural(screen.offline_periods, 'offline period')})"
        )
        if screen.matched:
            lines.append(
                f"  {screen.name}: matches GET /orders/active at seq {screen.last} "
                f"({screen.active_orders} active, digest {screen.digest}), {away}"
            )
            continue
        summary = "; ".join(screen.problems[:max_problems])
        more = len(screen.problems) - max_problems
        if more > 0:
            summary += f"; and {more} more"
        lines.append(f"  {screen.name}: MISMATCH: {summary}")

    if report.ok:
        result = "OK, every screen matches GET /orders/active"
    else:
        mismatched = sum(1 for screen in report.screens if not screen.matched)
        result = (
            f"FAILED, {mismatched} of {len(report.screens)} screens differ from the database "
            f"and {report.failed} API calls failed"
        )
    lines.append("result: " + result)
    return "\n".join(lines)


def render_progress(progress: ReplayProgress, width: int = 30) -> str:
    """Return a one-line progress bar: ``[####......] 120/430 orders, 85.1 orders/s``."""
    filled = width * progress.done // progress.total if progress.total else width
    bar = "#" * filled + "." * (width - filled)
    return f"replay [{bar}] {progress.done}/{progress.total} orders, {progress.rate:.1f} orders/s"


class ProgressPrinter:
    """Print replay progress on ``stream``.

    With ``bar`` the progress bar is redrawn in place on each call, for a
    terminal. Without it, one line is printed every ``interval`` seconds and
    once when every order is done, for logs and pipes.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        bar: bool,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.bar = bar
        self.interval = interval
        self.clock = clock
        self._next_line = clock() + interval
        self._drawn = False
        self._drawn_width = 0
        self._finished = False

    def __call__(self, progress: ReplayProgress) -> None:
        if self.bar:
            line = render_progress(progress)
            # Spaces wipe the end of a longer line drawn before this one.
            self.stream.write("\r" + line.ljust(self._drawn_width))
            self.stream.flush()
            self._drawn_width = len(line)
            self._drawn = True
            return

        finished = progress.done >= progress.total
        if finished and self._finished:
            return
        if finished or self.clock() >= self._next_line:
            self.stream.write(
                f"replay: {progress.done}/{progress.total} orders done after "
                f"{progress.elapsed:.0f} s, {progress.rate:.1f} orders/s\n"
            )
            self.stream.flush()
            self._next_line = self.clock() + self.interval
            self._finished = finished

    def close(self) -> None:
        """End the bar's line, so later output starts on a new one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# Command line.


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``orderflow replay`` on the subcommands of the ``orderflow`` parser."""
    parser = commands.add_parser(
        "replay",
        help="replay the pizza-place orders against a server and check the screens",
        description=(
            "Create the orders of order_lines.csv at their original pace (scaled by --speed), "
            "drive each through the kitchen with screens attached, then check that every "
            "screen matches GET /orders/active. Exits 1 on any mismatch or failed API call."
        ),
    )

    parser.add_argument("file", type=Path, metavar="FILE", help="the data set's order_lines.csv")

    parser.add_argument(
        "--types",
        type=Path,
        metavar="PIZZA_TYPES",
        help="the data set's pizza_types.csv (default: the one beside FILE)",
    )

    parser.add_argument(
        "--speed",
        type=_speed_argument,
        default=0.0,
        metavar="X",
        help=(
            "data seconds replayed per real second, e.g. 60 for one minute per second; "
            "0 or max runs as fast as the server allows (default: max)"
        ),
    )

    parser.add_argument(
        "--screens", type=int, default=3, metavar="N", help="screens attached (default: 3)"
    )

    parser.add_argument(
        "--days",
        type=int,
        metavar="D",
        help="replay only the first D calendar days (default: the whole file)",
    )

    parser.add_argument(
        "--url",
        metavar="URL",
        help="a running orderflow server, e.g. http://127.0.0.1:8080 "
        "(default: start one in-process)",
    )

    parser.add_argument(
        "--db",
        metavar="URL",
        help="database of the in-process server: sqlite:///path.db or "
        "postgresql://user@host/dbname; orders go to location 'main' "
        "(default: a temporary SQLite file, deleted afterwards)",
    )

    parser.add_argument(
        "--broker",
        metavar="URL",
        default="memory://",
        help="broker of the in-process server: memory:// or redis://host:6379/0 "
        "(default: memory://)",
    )

    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="S",
        help="seed of the choices of cancels, recalls and screen drops (default: 1)",
    )

    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="print no progress on stderr (default: a bar on a terminal, else a line every 5 s)",
    )

    parser.set_defaults(run=_run_command)


def _speed_argument(text: str) -> float:
    try:
        return parse_speed(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_command(args: argparse.Namespace) -> int:
    printer: ProgressPrinter | None = None
    if not args.no_progress:
        printer = ProgressPrinter(sys.stderr, bar=sys.stderr.isatty())

    async def replay() -> ReplayReport:
        return await run_replay(
            args.file,
            pizza_types=args.types,
            days=args.days,
            speed=args.speed,
            screens=args.screens,
            url=args.url,
            database=args.db,
            broker=args.broker,
            seed=args.seed,
            on_progress=printer,
        )

    try:
        with quiet_library_logs(getattr(args, "log_level", None)):
            report = anyio.run(replay)
    except OSError as exc:
        if args.url:
            message = (
                f"connecting to {args.url} failed: {exc}; check that orderflow serve runs there"
            )
        else:
            message = f"the in-process server failed: {exc}"
        print(f"orderflow: {message}", file=sys.stderr)
        return 1
    finally:
        if printer is not None:
            printer.close()

    print(format_replay_report(report))
    if not report.ok:
        mismatched = [screen.name for screen in report.screens if not screen.matched]
        print(
            f"orderflow: replay failed: {len(mismatched)} screens differ from the database"
            f"{' (' + ', '.join(mismatched) + ')' if mismatched else ''}, "
            f"{report.failed} API calls failed",
            file=sys.stderr,
        )
        return 1
    return 0
