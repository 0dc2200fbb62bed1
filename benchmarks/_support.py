"""Shared parts of the benchmarks: sizes, orders to move, statistics and the recorder.

Every benchmark records rows into one ``Recorder`` per session; at the end
of the session ``benchmarks._summary.write_summary`` turns them into
``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._summary import TABLES

if TYPE_CHECKING:
    from orderflow import Engine

REPO_ROOT = Path(__file__).resolve().parent.parent

# The target of orderflow's original design for a screen's recovery, in ms.
DESIGN_RECOVERY_MS = 20.0


# Sizes.


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each benchmark does. ``full`` makes the figures; ``smoke`` checks they run."""

    name: str
    commit_rounds: int
    sqlite_batch: int
    postgres_batch: int
    orders_per_writer: int
    recovery_actives: tuple[int, ...]
    recovery_missed: tuple[int, ...]
    recovery_rounds: Mapping[int, int]
    recovery_goal_rounds: int
    fanout_screens: tuple[int, ...]
    fanout_latency_rounds: int
    fanout_bursts: int
    fanout_burst_events: int
    fanout_orders: int
    memory_screens: int
    memory_repeats: int
    memory_orders: int
    replay_days: int | None
    replay_screens: int
    engine_baseline_seconds: float


FULL = Sizes(
    name="full",
    commit_rounds=9,
    sqlite_batch=1000,
    postgres_batch=300,
    orders_per_writer=50,
    recovery_actives=(10, 200, 2000),
    recovery_missed=(0, 100, 1000),
    recovery_rounds={0: 50, 100: 50, 1000: 20},
    recovery_goal_rounds=200,
    fanout_screens=(1, 10, 100),
    fanout_latency_rounds=200,
    fanout_bursts=5,
    fanout_burst_events=500,
    fanout_orders=50,
    memory_screens=500,
    memory_repeats=3,
    memory_orders=10_000,
    replay_days=None,
    replay_screens=10,
    engine_baseline_seconds=2.0,
)

SMOKE = Sizes(
    name="smoke",
    commit_rounds=2,
    sqlite_batch=20,
    postgres_batch=10,
    orders_per_writer=4,
    recovery_actives=(10, 20),
    recovery_missed=(0, 5),
    recovery_rounds={0: 2, 5: 2},
    recovery_goal_rounds=2,
    fanout_screens=(2,),
    fanout_latency_rounds=3,
    fanout_bursts=1,
    fanout_burst_events=20,
    fanout_orders=5,
    memory_screens=10,
    memory_repeats=1,
    memory_orders=100,
    replay_days=1,
    replay_screens=2,
    engine_baseline_seconds=0.2,
)

SIZES = {sizes.name: sizes for sizes in (FULL, SMOKE)}


# Orders to move.

ITEMS = (
    {"name": "Margherita (L)", "quantity": 2, "station": "oven"},
    {"name": "Hawaiian (M)", "quantity": 1, "station": "oven", "notes": "no onion"},
)
NEXT_STATE = {"READY": "PREPARING", "PREPARING": "READY"}


@dataclass(slots=True)
class OrderState:
    """An order's id with the state and version its writer last gave it."""

    order_id: str
    state: str
    version: int


class Orders:
    """Orders that one writer owns, each with the state and version it last gave it.

    Each transition moves an order between READY and PREPARING (a recall
    and its remake), so the work never runs out and the order stays active.
    """

    def __init__(self, orders: Sequence[OrderState]) -> None:
        self.orders = list(orders)
        self.position = 0

    def next(self) -> tuple[str, str, str, int]:
        """Return (order id, current state, next state, current version) and advance."""
        entry = self.orders[self.position]
        self.position = (self.position + 1) % len(self.orders)
        state, version = entry.state, entry.version
        entry.state = NEXT_STATE[state]
        entry.version = version + 1
        return entry.order_id, state, entry.state, version


def seed(
    engine: Engine, locations: Sequence[str], per_location: int, *, batch: int = 1000
) -> list[Orders]:
    """Create ``per_location`` READY orders in each location; return one ``Orders`` per location."""
    owned = []
    for location in locations:
        ids: list[OrderState] = []
        for first in range(0, per_location, batch):
            with engine.transaction() as tx:
                for number in range(first, min(first + batch, per_location)):
                    meta = {"table": number % 40 + 1, "channel": "dine-in"}
                    order = tx.create(ITEMS, location=location, meta=meta, actor="till")
                    for state in ("CONFIRMED", "PREPARING", "READY"):
                        order = tx.transition(order.id, state, actor="kitchen")
                    ids.append(OrderState(order.id, order.state, order.version))
        owned.append(Orders(ids))
    return owned


# Statistics.


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (0.5 is the median, 0.99 the p99)."""
    if not values:
        raise ValueError("no values to take a percentile of")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[min(int(rank), len(ordered)) - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def block_percentile(samples: Sequence[float], fraction: float, blocks: int = 3) -> float:
    """Return the median over ``blocks`` consecutive blocks of each block's percentile.

    One burst of load from another process on a shared machine then moves
    one block's tail, not the figure.
    """
    size = len(samples) // blocks
    if size == 0:
        return percentile(samples, fraction)
    return median(
        percentile(samples[start : start + size], fraction)
        for start in range(0, size * blocks, size)
    )


def goal_check(value: float, target: float, *, at_least: bool) -> tuple[bool, str]:
    """Compare ``value`` with a goal; return whether it is met and, for a miss, by how much."""
    met = value >= target if at_least else value <= target
    if met:
        return True, ""
    if at_least:
        short = (target - value) / target * 100.0
        return False, f"{short:.0f}% below the goal"
    over = (value - target) / target * 100.0
    return False, f"{over:.0f}% above the goal"


# Rows.


@dataclass
class Recorder:
    """The rows every benchmark recorded in this session, by table."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def add(self, table: str, row: Mapping[str, Any]) -> None:
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}; add it to TABLES")
        self.rows.setdefault(table, []).append(dict(row))

    def skip(self, benchmark: str, case: str, reason: str) -> None:
        """Record that a case of ``benchmark`` (commit, fanout...) was skipped, and why."""
        self.skipped.append({"table": benchmark, "case": case, "reason": reason})

    def fail(self, benchmark: str, case: str, reason: str) -> None:
        """Record that a case of ``benchmark`` failed, with the last line of its error."""
        self.failed.append({"table": benchmark, "case": case, "reason": reason})


def with_goal(row: dict[str, Any], goal: str, met: bool, miss: str) -> dict[str, Any]:
    """Return ``row`` with its goal and the result: met, or missed and by how much."""
    row["goal"] = goal
    row["met"] = met
    row["result"] = "met" if met else f"MISSED ({miss})"
    return row
