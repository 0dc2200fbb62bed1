"""``orderflow demo``: a kitchen screen misses two changes while offline and recovers.

The scenario runs against a real server that the demo starts in-process on
a free loopback port. An order is created (PENDING) and a kitchen screen
shows it. The screen loses its connection, the order goes CONFIRMED and then
PREPARING, and the screen reconnects and must show PREPARING.

Each round of the scenario is run with two ways of recovering:

- ``resume``: the screen's own reconnect, which resumes from its last seq
  and replays only the events it missed;
- ``fetch``: the older approach, where a reconnecting screen rebuilds its
  state from a fresh ``GET /orders/active`` on a new connection.

Both are timed from the start of the reconnect to a view consistent with the
server, and after every round the screen is compared with the database.

The module also contains what ``orderflow replay`` shares with the demo:
an in-process server on a temporary database (``local_server``), the
comparison of a screen with ``GET /orders/active`` (``compare_mirror``) and
``percentile``. Server and client modules are imported inside the functions
that use them, so ``orderflow --help`` does not load them.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio

if TYPE_CHECKING:
    from .client import HttpClient, Mirror, Screen

__all__ = [
    "DEMO_LOCATION",
    "RECOVERY_TARGET_MS",
    "ApproachResult",
    "DemoReport",
    "LocalServer",
    "RoundResult",
    "ScreenFactory",
    "add_command",
    "compare_mirror",
    "format_demo_report",
    "local_server",
    "percentile",
    "quiet_library_logs",
    "run_demo",
    "single_error",
    "wait_for",
]

logger = logging.getLogger(__name__)

# orderflow's target for a screen's recovery after a reconnect, in
# milliseconds. The demo prints it beside each measurement.
# Missing it is reported but does not fail the demo, because timings on a
# loaded machine vary.
RECOVERY_TARGET_MS = 20.0

# The demo writes to its own location, so a database passed with --db keeps
# its real orders apart from the demo's.
DEMO_LOCATION = "demo"

Approach = Literal["resume", "fetch"]

_APPROACH_TITLES: dict[Approach, str] = {
    "resume": "resume from the screen's seq (the Screen's own reconnect)",
    "fetch": "fetch on reconnect (a new connection and GET /orders/active)",
}

_DEMO_ITEMS = ({"name": "Margherita (L)", "quantity": 2, "station": "oven"},)


class ScreenFactory(Protocol):
    """A callable that builds a screen; the ``Screen`` class itself is one.

    Tests pass their own to inject faults, such as a mirror that loses events.
    """

    def __call__(self, urls: str, *, location: str, name: str) -> Screen: ...


# Results.


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One round of the scenario.

    ``recovery_ms`` is None when the screen never recovered. ``problems``
    lists every way the screen differed from the database; it is empty when
    the round matched.
    """

    recovery_ms: float | None
    problems: tuple[str, ...] = ()

    @property
    def matched(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class ApproachResult:
    """The rounds of one recovery approach."""

    approach: Approach
    rounds: tuple[RoundResult, ...]

    @property
    def title(self) -> str:
        return _APPROACH_TITLES[self.approach]

    @property
    def recoveries_ms(self) -> list[float]:
        return [r.recovery_ms for r in self.rounds if r.recovery_ms is not None]

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.recoveries_ms, 0.5)

    @property
    def max_ms(self) -> float | None:
        recoveries = self.recoveries_ms
        return max(recoveries) if recoveries else None

    @property
    def matched_rounds(self) -> int:
        return sum(1 for r in self.rounds if r.matched)

    @property
    def ok(self) -> bool:
        return bool(self.rounds) and self.matched_rounds == len(self.rounds)


@dataclass(frozen=True, slots=True)
class DemoReport:
    """The measurements of one ``run_demo`` call: one result per approach, resume first."""

    server_url: str
    database: str
    broker: str
    approaches: tuple[ApproachResult, ...]
    target_ms: float = RECOVERY_TARGET_MS

    @property
    def ok(self) -> bool:
        """Whether the screen matched the database in every round of every approach."""
        return all(result.ok for result in self.approaches)

    def approach(self, name: Approach) -> ApproachResult:
        for result in self.approaches:
            if result.approach == name:
                return result
        raise KeyError(name)


# Helpers shared with orderflow replay.


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile of ``values`` (``fraction`` 0.5 is the median).

    Returns None for no values.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def compare_mirror(mirror: Mirror, active: Mapping[str, Any]) -> list[str]:
    """List how a screen's mirror differs from a ``GET /orders/active`` response.

    Compares the epoch, the seq (mirror.last against the head), the set of
    active orders, each order's state and version, and the digest. Returns
    an empty list when they match.
    """
    problems: list[str] = []
    if mirror.epoch != active["epoch"]:
        problems.append(f"epoch {mirror.epoch}, but the database has epoch {active['epoch']}")
    if mirror.last != active["head"]:
        problems.append(f"at seq {mirror.last}, but the database head is {active['head']}")

    database = {order["id"]: (order["state"], order["version"]) for order in active["orders"]}
    screen = mirror.states()
    for order_id in sorted(database.keys() - screen.keys()):
        state, version = database[order_id]
        problems.append(f"order {order_id} is missing (database: {state} v{version})")
    for order_id in sorted(screen.keys() - database.keys()):
        state, version = screen[order_id]
        problems.append(f"order {order_id} ({state} v{version}) is not active in the database")
    for order_id in sorted(screen.keys() & database.keys()):
        if screen[order_id] != database[order_id]:
            state, version = screen[order_id]
            expected_state, expected_version = database[order_id]
            problems.append(
                f"order {order_id} is {state} v{version}, "
                f"but {expected_state} v{expected_version} in the database"
            )

    if mirror.digest != active["digest"]:
        problems.append(f"digest {mirror.digest}, but the database digest is {active['digest']}")
    return problems


@dataclass(frozen=True, slots=True)
class LocalServer:
    """A server started in-process: its URL and a description of its database."""

    url: str
    database: str
    broker: str


@asynccontextmanager
async def local_server(
    database: str | None = None, broker: str = "memory://"
) -> AsyncIterator[LocalServer]:
    """Run a server on 127.0.0.1 with a free port for the duration of the block.

    Without ``database`` it uses a SQLite file in a temporary folder that is
    deleted afterwards, so it needs no set-up.
    """
    from .aio import AsyncEngine
    from .server import Server, ServerConfig
    from .storage import redact_url

    with tempfile.TemporaryDirectory(prefix="orderflow-") as folder:
        if database is None:
            url = f"sqlite:///{Path(folder) / 'orderflow.db'}"
            description = "a temporary SQLite file"
        else:
            url = database
            description = redact_url(database)

        config = ServerConfig(host="127.0.0.1", port=0)
        async with AsyncEngine.open(url, broker, feed_options=config.feed) as engine:
            server = Server(engine, config)
            async with anyio.create_task_group() as task_group:
                server_url = await task_group.start(server.serve)
                try:
                    yield LocalServer(server_url, description, redact_url(broker))
                finally:
                    server.shutdown()


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise an exception group that contains exactly one error as that error.

    Task groups wrap every error in an exception group, so without this a
    caller could not catch, say, a refused connection by its type.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaf_errors(group)
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaf_errors(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaf_errors(error))
        else:
            leaves.append(error)
    return leaves


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Wait until ``condition()`` holds, checking every millisecond.

    Raises ``TimeoutError`` after ``timeout`` seconds. Use it for state that
    changes without a notification, such as ``Screen.connected``.
    """
    with anyio.fail_after(timeout):
        # Polling, because nothing signals these changes.
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.001)


# The scenario.


async def run_demo(
    *,
    database: str | None = None,
    broker: str = "memory://",
    rounds: int = 20,
    timeout: float = 10.0,
    location: str = DEMO_LOCATION,
    screen_factory: ScreenFactory | None = None,
) -> DemoReport:
    """Run the offline-screen scenario ``rounds`` times per approach and measure recovery.

    Starts a server in-process (see ``local_server``). ``timeout`` bounds
    each wait for the screen, in seconds; a screen that misses it makes the
    round fail instead of raising. Raises ``ConfigurationError`` for an
    invalid URL or ``rounds`` below 1, and the errors of the engine and the
    HTTP client when the server cannot be used at all.
    """
    from .client import HttpClient, Screen
    from .errors import ConfigurationError

    if rounds < 1:
        raise ConfigurationError(f"rounds must be at least 1, got {rounds}")
    factory: ScreenFactory = screen_factory or Screen

    results: list[ApproachResult] = []
    with single_error():
        async with local_server(database, broker) as server, HttpClient(server.url) as client:
            for approach in ("resume", "fetch"):
                name = f"kitchen ({approach})"
                async with factory(server.url, location=location, name=name) as screen:
                    await screen.wait_until(lambda _: screen.connected, timeout)
                    outcomes = []
                    for number in range(1, rounds + 1):
                        outcome = await _run_round(
                            approach, number, screen, client, server.url, location, timeout
                        )
                        outcomes.append(outcome)
                results.append(ApproachResult(approach, tuple(outcomes)))

    return DemoReport(server.url, server.database, server.broker, tuple(results))


async def _run_round(
    approach: Approach,
    number: int,
    screen: Screen,
    client: HttpClient,
    url: str,
    location: str,
    timeout: float,
) -> RoundResult:
    """Create an order, take the screen away while it moves on, and time the screen's return."""
    order = await client.create_order(
        _DEMO_ITEMS, location=location, meta={"table": number}, actor="demo"
    )
    order_id = order["id"]
    try:
        await screen.wait_until(lambda m: _state_of(m, order_id) == "PENDING", timeout)
    except TimeoutError:
        return RoundResult(
            None, (f"the screen did not show new order {order_id} within {timeout} s",)
        )

    screen.go_offline()
    try:
        await wait_for(lambda: not screen.connected, timeout)
    except TimeoutError:
        screen.go_online()
        return RoundResult(None, (f"the screen did not disconnect within {timeout} s",))

    for state in ("CONFIRMED", "PREPARING"):
        order = await client.transition(
            order_id, state, expected_version=order["version"], actor="demo"
        )
    head = (await client.active(location))["head"]

    if approach == "resume":
        recovery, problems = await _recover_by_resuming(screen, head, timeout)
    else:
        recovery, problems = await _recover_by_fetching(screen, url, location, timeout)

    active = await client.active(location)
    problems.extend(compare_mirror(screen.mirror, active))
    state_shown = _state_of(screen.mirror, order_id)
    if state_shown is None:
        problems.append(f"the screen does not show order {order_id}; expected it as PREPARING")
    elif state_shown != "PREPARING":
        problems.append(f"the screen shows order {order_id} as {state_shown}, not PREPARING")

    problems.extend(await _clear_order(screen, client, order, timeout))
    recovery_ms = None if recovery is None else recovery * 1000.0
    return RoundResult(recovery_ms, tuple(problems))


async def _recover_by_resuming(
    screen: Screen, head: int, timeout: float
) -> tuple[float | None, list[str]]:
    # Screen.last_recovery runs from the start of the new connection to the
    # moment its mirror reached the head the server announced on resuming.
    screen.last_recovery = None
    screen.go_online()
    try:
        await screen.wait_until(lambda m: m.last >= head and screen.connected, timeout)
        await wait_for(lambda: screen.last_recovery is not None, timeout)
    except TimeoutError:
        return None, [
            f"the screen did not reach seq {head} within {timeout} s (at seq {screen.mirror.last})"
        ]
    problems = []
    if screen.last_outcome != "resumed":
        problems.append(f"the screen reconnected with a {screen.last_outcome}, not a resume")
    return screen.last_recovery, problems


async def _recover_by_fetching(
    screen: Screen, url: str, location: str, timeout: float
) -> tuple[float | None, list[str]]:
    from .client import HttpClient

    # Timed like Screen.last_recovery: from the start of a new connection to
    # a consistent view. The screen is offline, so nothing else touches its
    # mirror while the fetched state replaces it.
    started = time.perf_counter()
    fresh = HttpClient(url)
    try:
        active = await fresh.active(location)
        screen.mirror.load_snapshot(active)
        recovery = time.perf_counter() - started
    finally:
        await fresh.aclose()

    # The live feed then resumes from the fetched head; that is not timed.
    # NOTE: a real fetch-on-reconnect screen subscribes separately, so it can
    # miss events committed between the fetch and the subscription. Nothing
    # is written in between here, so the demo compares only the time.
    screen.go_online()
    try:
        await wait_for(lambda: screen.connected, timeout)
    except TimeoutError:
        return recovery, [f"the screen did not reconnect within {timeout} s"]
    return recovery, []


async def _clear_order(
    screen: Screen, client: HttpClient, order: Mapping[str, Any], timeout: float
) -> list[str]:
    """Complete the round's order, so every round starts with the same active orders."""
    order_id = order["id"]
    version = order["version"]
    for state in ("READY", "COMPLETED"):
        version = (
            await client.transition(order_id, state, expected_version=version, actor="demo")
        )["version"]
    try:
        await screen.wait_until(lambda m: order_id not in m.orders, timeout)
    except TimeoutError:
        return [f"the screen still shows completed order {order_id} after {timeout} s"]
    return []


def _state_of(mirror: Mirror, order_id: str) -> str | None:
    order = mirror.orders.get(order_id)
    return None if order is None else str(order["state"])


# Output.


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def format_demo_report(report: DemoReport, *, max_problems: int = 3) -> str:
    """Return the report as short plain text, one block per approach."""
    rounds = len(report.approaches[0].rounds) if report.approaches else 0
    lines = [
        "orderflow demo: a kitchen screen is offline while its order goes CONFIRMED, "
        "then PREPARING",
        f"server {report.server_url} on {report.database}, broker {report.broker}, "
        f"{rounds} rounds per approach",
    ]
    for result in report.approaches:
        worst = result.max_ms
        met = worst is not None and worst <= report.target_ms
        lines += [
            "",
            result.title,
            f"  recovery: p50 {_ms(result.p50_ms)}, max {_ms(worst)} "
            f"(target {report.target_ms:g} ms: {'met' if met else 'missed'})",
            f"  screen matched the database in {result.matched_rounds} of "
            f"{len(result.rounds)} rounds (orders, states, versions, digest)",
        ]
        problem_count = 0
        for number, outcome in enumerate(result.rounds, start=1):
            for problem in outcome.problems:
                if problem_count < max_problems:
                    lines.append(f"  MISMATCH in round {number}: {problem}")
                problem_count += 1
        if problem_count > max_problems:
            lines.append(f"  ... and {problem_count - max_problems} more problems")

    lines += [
        "",
        "Recovery runs from the start of the reconnect to a view consistent with the server.",
        "For fetch on reconnect that is a new HTTP connection and the GET; reopening the",
        "WebSocket for live events comes after it and is not timed.",
        f"orderflow's recovery target is {report.target_ms:g} ms; missing it does not "
        "fail the demo.",
        "result: "
        + (
            "OK, both approaches matched the database in every round"
            if report.ok
            else "FAILED, the screen did not match the database (see MISMATCH above)"
        ),
    ]
    return "\n".join(lines)


# Command line.


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``orderflow demo`` on the subcommands of the ``orderflow`` parser."""
    parser = commands.add_parser(
        "demo",
        help="show a screen recovering after missing changes, against an in-process server",
        description=(
            "Start a server in-process, take a kitchen screen offline while its order goes "
            "CONFIRMED and PREPARING, and time how fast it recovers: resuming from its seq, "
            "and fetching GET /orders/active as older screens did. Exits 1 if the screen "
            "ever differs from the database."
        ),
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help=(
            "database URL: sqlite:///path.db or postgresql://user@host/dbname; orders go to "
            f"location {DEMO_LOCATION!r} (default: a temporary SQLite file, deleted afterwards)"
        ),
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        default="memory://",
        help="broker URL: memory:// or redis://host:6379/0 (default: memory://)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=20,
        metavar="N",
        help="rounds of the scenario per approach (default: 20)",
    )
    parser.set_defaults(run=_run_command)


@contextmanager
def quiet_library_logs(log_level: str | None) -> Iterator[None]:
    """Raise the orderflow loggers to WARNING for the block when ``log_level`` is INFO.

    The demo and the replay print their own report, which the server's INFO
    lines about every screen would bury. ``--log-level DEBUG`` keeps them.
    The level is restored afterwards.
    """
    library = logging.getLogger("orderflow")
    previous = library.level
    if log_level == "INFO":
        library.setLevel(logging.WARNING)
    try:
        yield
    finally:
        library.setLevel(previous)


def _run_command(args: argparse.Namespace) -> int:
    async def demo() -> DemoReport:
        return await run_demo(database=args.db, broker=args.broker, rounds=args.rounds)

    try:
        with quiet_library_logs(getattr(args, "log_level", None)):
            report = anyio.run(demo)
    except OSError as exc:
        print(f"orderflow: the demo server failed: {exc}", file=sys.stderr)
        return 1

    print(format_demo_report(report))
    if not report.ok:
        failed = [r.approach for r in report.approaches if not r.ok]
        print(
            f"orderflow: the screen did not match the database ({', '.join(failed)})",
            file=sys.stderr,
        )
        return 1
    return 0
