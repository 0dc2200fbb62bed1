"""Real data: the pizza-place year through ``run_replay`` at max speed with screens attached.

``run_replay`` starts a server in this process on a temporary SQLite file
(``synchronous=FULL``, the default) with the memory broker. It attaches the
screens (``orderflow.client.Screen``, also in this process), creates every
order over HTTP and moves it through the kitchen, then checks every screen
against ``GET /orders/active``. The baseline is ``Engine.transition`` on a
SQLite file with the same settings, in the same process and run, with no
server, HTTP or screens. The ratio is the share of the engine's own rate
that the whole stack keeps.

Skips, saying where it looked, when the data set is absent.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from benchmarks._support import Recorder, Sizes, seed
from orderflow import Engine
from orderflow.replay import ReplayReport, run_replay
from tests.conftest import pizza_data_dir


def engine_rate(database: str, seconds: float) -> float:
    """Return transitions per second of one writer through ``Engine`` for about ``seconds``."""
    with Engine.open(database) as engine:
        orders = seed(engine, ["main"], 50)[0]
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(100):
                order_id, _, to, version = orders.next()
                engine.transition(order_id, to, expected_version=version)
            done += 100
        return done / (time.perf_counter() - started)


def test_replay(benchmark: Any, sizes: Sizes, recorder: Recorder, tmp_path: Path) -> None:
    folder = pizza_data_dir()
    baseline = engine_rate(f"sqlite:///{tmp_path / 'engine.db'}", sizes.engine_baseline_seconds)
    reports: list[ReplayReport] = []
    wall: list[float] = []

    def replay() -> None:
        started = time.perf_counter()
        reports.append(
            anyio.run(
                partial(
                    run_replay,
                    folder / "order_lines.csv",
                    days=sizes.replay_days,
                    speed=0.0,
                    screens=sizes.replay_screens,
                )
            )
        )
        wall.append(time.perf_counter() - started)

    benchmark.pedantic(replay, rounds=1)
    report = reports[0]

    assert report.failed == 0, report.errors
    mismatched = [screen for screen in report.screens if not screen.matched]
    assert not mismatched, [screen.problems[:3] for screen in mismatched]

    period = f"{report.first_order:%Y-%m-%d} to {report.last_order:%Y-%m-%d}"
    screens = len(report.screens)
    rows: list[dict[str, Any]] = [
        {
            "case": f"orders replayed ({period})",
            "value": f"{report.created:,}",
            "note": f"{report.cancelled} cancelled, {report.recalled} recalled",
        },
        {
            "case": "total time",
            "value": f"{wall[0]:.1f} s",
            "note": (
                f"{report.elapsed:.1f} s driving the orders; the rest reads the file, "
                f"connects {screens} screens and checks them"
            ),
        },
        {
            "case": "transitions per second",
            "value": f"{report.transitions_per_second:,.0f}",
            "baseline": f"{baseline:,.0f} (Engine alone)",
            "ratio": report.transitions_per_second / baseline,
            "note": f"{report.transitions:,} transitions and {report.created:,} creations over HTTP",
        },
        {
            "case": "commit to screen",
            "value": f"p50 {report.latency_p50_ms:.1f} ms, p99 {report.latency_p99_ms:.1f} ms",
            "note": "one process: the replay's HTTP client, the server and the screens",
        },
        {
            "case": "screens consistent at the end",
            "value": f"{screens - len(mismatched)} of {screens}",
            "note": f"each compared with GET /orders/active at seq {report.head:,}",
        },
    ]
    benchmark.extra_info.update(
        {
            "elapsed_s": report.elapsed,
            "transitions_per_second": report.transitions_per_second,
            "engine_transitions_per_second": baseline,
            "created": report.created,
            "transitions": report.transitions,
        }
    )
    for row in rows:
        recorder.add("replay", row)
