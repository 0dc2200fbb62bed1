"""Tests of ``orderflow replay``: the plan, the command on one week of real data, and ``run_replay``.

The small runs use a data set of five orders that each test writes itself.
The broken run uses a mirror that loses COMPLETED events, so finished
orders stay on the screen: a loss that no later event repairs.
"""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from orderflow import cli
from orderflow.client import Mirror, Screen
from orderflow.errors import ConfigurationError
from orderflow.importer import PizzaOrder, read_pizza_orders
from orderflow.replay import (
    CANCEL_REASONS,
    OrderPlan,
    ProgressPrinter,
    ReplayProgress,
    build_plan,
    parse_speed,
    render_progress,
    run_replay,
)
from tests.conftest import REPO_ROOT, pizza_data_dir

PIZZA_TYPES = """\
pizza_type_id,pizza_name,pizza_category,pizza_ingredients
hawaiian,The Hawaiian Pizza,Classic,"Sliced Ham, Pineapple, Mozzarella Cheese"
veggie,The Vegetables Pizza,Veggie,"Mushrooms, Tomatoes, Red Peppers"
"""

# Five orders from 11:38:36 to 13:00:00, 4884 s apart from first to last.
ORDER_LINES = """\
pizza_id,order_id,pizza_name_id,quantity,order_date,order_time,unit_price,pizza_size
1,1,hawaiian_m,1,1/1/2015,11:38:36,"13,25",M
2,2,veggie_l,2,1/1/2015,11:40:00,16,L
3,2,hawaiian_s,1,1/1/2015,11:40:00,"10,5",S
4,3,hawaiian_m,1,1/1/2015,12:10:00,"13,25",M
5,4,veggie_l,3,1/1/2015,12:30:00,16,L
6,5,hawaiian_m,1,1/1/2015,13:00:00,"13,25",M
"""
TINY_SPAN = 4884.0

SCREEN_LINE = re.compile(r"(screen-\d): matches GET /orders/active at seq (\d+)")


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Write the five-order data set and return the path of its order_lines.csv."""
    (tmp_path / "pizza_types.csv").write_text(PIZZA_TYPES, encoding="utf-8")
    order_lines = tmp_path / "order_lines.csv"
    order_lines.write_text(ORDER_LINES, encoding="utf-8")
    return order_lines


class CompletionLosingMirror(Mirror):
    """A mirror that takes every COMPLETED event as applied without applying it."""

    def apply(self, event: Mapping[str, Any]) -> bool:
        if event["seq"] == self.last + 1 and event["order"]["state"] == "COMPLETED":
            self.last = event["seq"]
            return True
        return super().apply(event)


def second_screen_loses(urls: str, *, location: str, name: str) -> Screen:
    screen = Screen(urls, location=location, name=name)
    if name == "screen-2":
        screen.mirror = CompletionLosingMirror()
    return screen


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orderflow", "replay", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
        check=False,
    )


# The command on one week of the real data set.


def test_replay_command_week() -> None:
    order_lines = pizza_data_dir() / "order_lines.csv"

    result = run_command(
        str(order_lines), "--days", "7", "--speed", "max", "--screens", "3", "--no-progress"
    )
    output = result.stdout
    screens = SCREEN_LINE.findall(output)
    rates = re.search(r"([0-9.]+) orders/s, ([0-9.]+) transitions/s", output)
    latency = re.search(r"p50 ([0-9.]+) ms, p99 ([0-9.]+) ms over (\d+) deliveries", output)

    assert result.returncode == 0, output + result.stderr
    assert "replayed 430 orders of order_lines.csv (2015-01-01 11:38 to 2015-01-07 22:46)" in output
    assert [name for name, _ in screens] == ["screen-1", "screen-2", "screen-3"]
    assert len({seq for _, seq in screens}) == 1
    assert "0 failed API calls" in output
    assert "result: OK" in output
    assert rates is not None
    assert float(rates.group(1)) > 0
    assert float(rates.group(2)) > float(rates.group(1))
    assert latency is not None
    assert 0 < float(latency.group(1)) <= float(latency.group(2))
    assert int(latency.group(3)) > 0
    assert "replay:" not in result.stderr


def test_replay_command_progress_lines(tiny_data: Path) -> None:
    # stderr is a pipe here, so the command prints lines, not a bar.
    result = run_command(str(tiny_data), "--screens", "1")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "replay: 5/5 orders done" in result.stderr
    assert "\r" not in result.stderr


def test_replay_command_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["replay", str(tmp_path / "absent.csv")])

    assert code == 2
    assert "absent.csv is not a file" in capsys.readouterr().err


def test_replay_command_missing_types(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    order_lines = tmp_path / "order_lines.csv"
    order_lines.write_text(ORDER_LINES, encoding="utf-8")

    code = cli.main(["replay", str(order_lines)])

    assert code == 2
    assert "pass its path with --types" in capsys.readouterr().err


def test_replay_command_bad_row(tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_data.write_text(ORDER_LINES.replace("12:10:00", "12h10"), encoding="utf-8")

    code = cli.main(["replay", str(tiny_data), "--no-progress"])

    assert code == 1
    assert "line 5, column order_time" in capsys.readouterr().err


def test_replay_command_url_and_db(tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["replay", str(tiny_data), "--url", "http://127.0.0.1:1", "--db", "sqlite:///x.db"]
    )

    assert code == 2
    assert "either a server URL or a database URL" in capsys.readouterr().err


def test_replay_command_unreachable(tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A port that was free a moment ago: nothing listens on it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    code = cli.main(["replay", str(tiny_data), "--url", f"http://127.0.0.1:{port}"])

    assert code == 1
    assert f"connecting to http://127.0.0.1:{port} failed" in capsys.readouterr().err


def test_replay_command_bad_speed(tiny_data: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["replay", str(tiny_data), "--speed", "fast"])

    assert exit_info.value.code == 2


# run_replay on both backends.


@pytest.mark.anyio
async def test_run_replay_tiny(tiny_data: Path) -> None:
    # Seed 2 takes one screen offline and drops the other's connection.
    report = await run_replay(tiny_data, screens=2, seed=2, disruption_rate=0.5)

    assert report.ok, report
    assert sum(screen.drops for screen in report.screens) == 1
    assert sum(screen.offline_periods for screen in report.screens) == 1
    assert report.created == 5
    # The last order starts at the end of the replay, so it stays PENDING.
    assert report.left_active == 1
    assert [screen.name for screen in report.screens] == ["screen-1", "screen-2"]
    for screen in report.screens:
        assert screen.active_orders == 1
        assert screen.last == report.head
    assert report.head == report.created + report.transitions


@pytest.mark.anyio
async def test_run_replay_cancels_and_recalls(tiny_data: Path) -> None:
    cancelled = await run_replay(tiny_data, screens=1, cancel_rate=1.0)
    recalled = await run_replay(tiny_data, screens=1, recall_rate=1.0)

    assert cancelled.ok
    assert cancelled.cancelled == 4
    assert recalled.ok
    assert recalled.recalled == 4


@pytest.mark.anyio
async def test_run_replay_losing_screen_fails(tiny_data: Path) -> None:
    report = await run_replay(
        tiny_data, screens=2, disruption_rate=0.0, screen_factory=second_screen_loses
    )
    first, second = report.screens

    assert not report.ok
    assert first.matched
    assert not second.matched
    assert any("is not active in the database" in problem for problem in second.problems)


def test_replay_command_mismatch_exits_1(
    tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every Screen the command builds gets the losing mirror.
    monkeypatch.setattr("orderflow.client.Mirror", CompletionLosingMirror)

    code = cli.main(["replay", str(tiny_data), "--screens", "2", "--no-progress"])
    captured = capsys.readouterr()

    assert code == 1
    assert "screen-1: MISMATCH" in captured.out
    assert "screen-2: MISMATCH" in captured.out
    assert "result: FAILED, 2 of 2 screens differ" in captured.out
    assert "2 screens differ from the database (screen-1, screen-2)" in captured.err


@pytest.mark.anyio
async def test_run_replay_keeps_pace(tiny_data: Path) -> None:
    # At this speed the last order starts one second after the first.
    report = await run_replay(tiny_data, screens=1, speed=TINY_SPAN)

    assert report.ok
    assert report.elapsed >= 1.0
    assert report.elapsed < 10.0


@pytest.mark.anyio
async def test_run_replay_rejects_screens(tiny_data: Path) -> None:
    with pytest.raises(ConfigurationError, match="screens must be at least 1"):
        await run_replay(tiny_data, screens=0)


@pytest.mark.anyio
async def test_run_replay_reports_progress(tiny_data: Path) -> None:
    seen: list[ReplayProgress] = []

    await run_replay(tiny_data, screens=1, on_progress=seen.append)

    assert seen
    assert seen[-1].done == 5
    assert all(progress.total == 5 for progress in seen)


# The plan.


def tiny_orders(order_lines: Path) -> list[PizzaOrder]:
    return list(read_pizza_orders(order_lines, order_lines.with_name("pizza_types.csv")))


def test_plan_same_seed(tiny_data: Path) -> None:
    orders = tiny_orders(tiny_data)

    first = build_plan(orders, seed=7, screens=3, cancel_rate=0.5, disruption_rate=0.5)
    again = build_plan(orders, seed=7, screens=3, cancel_rate=0.5, disruption_rate=0.5)

    assert first == again


def test_plan_steps_in_time_order(tiny_data: Path) -> None:
    plan = build_plan(tiny_orders(tiny_data), seed=1, screens=1, recall_rate=1.0)

    for order in plan.orders:
        times = [order.start, *(step.at for step in order.steps)]
        assert times == sorted(times)
        assert all(step.at <= plan.end for step in order.steps)


def test_plan_lifecycle(tiny_data: Path) -> None:
    plan = build_plan(tiny_orders(tiny_data), seed=1, screens=1, cancel_rate=0.0)

    first = plan.orders[0]

    assert [step.to for step in first.steps] == ["CONFIRMED", "PREPARING", "READY", "COMPLETED"]
    assert first.finished
    assert plan.orders[-1].steps == ()


def test_plan_recall(tiny_data: Path) -> None:
    plan = build_plan(tiny_orders(tiny_data), seed=1, screens=1, recall_rate=1.0)

    steps = plan.orders[0].steps

    assert [step.to for step in steps] == [
        "CONFIRMED",
        "PREPARING",
        "READY",
        "PREPARING",
        "READY",
        "COMPLETED",
    ]
    assert [step.recall for step in steps] == [False, False, False, True, False, False]


def test_plan_cancel(tiny_data: Path) -> None:
    plan = build_plan(tiny_orders(tiny_data), seed=1, screens=1, cancel_rate=1.0)

    for order in plan.orders[:-1]:
        last = order.steps[-1]
        assert last.to == "CANCELLED"
        assert last.reason in CANCEL_REASONS
        assert "COMPLETED" not in [step.to for step in order.steps]


def test_plan_cook_time_grows(tiny_data: Path) -> None:
    plan = build_plan(tiny_orders(tiny_data), seed=1, screens=1, cancel_rate=0.0)
    one_pizza, three_pizzas = plan.orders[0], plan.orders[1]

    def cook(order: OrderPlan) -> float:
        preparing, ready = order.steps[1], order.steps[2]
        return float(ready.at - preparing.at)

    assert one_pizza.pizzas == 1
    assert three_pizzas.pizzas == 3
    assert cook(three_pizzas) > cook(one_pizza)


# Speed and progress.


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max", 0.0), ("MAX", 0.0), ("0", 0.0), ("60", 60.0), ("2.5", 2.5)],
)
def test_parse_speed(text: str, expected: float) -> None:
    assert parse_speed(text) == expected


@pytest.mark.parametrize("text", ["-1", "fast", "nan", "inf", ""])
def test_parse_speed_invalid(text: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid speed"):
        parse_speed(text)


def test_render_progress() -> None:
    line = render_progress(ReplayProgress(done=15, total=30, elapsed=3.0), width=10)

    assert line == "replay [#####.....] 15/30 orders, 5.0 orders/s"


def test_progress_printer_lines() -> None:
    now = [0.0]
    stream = io.StringIO()
    printer = ProgressPrinter(stream, bar=False, interval=5.0, clock=lambda: now[0])

    printer(ReplayProgress(1, 10, 1.0))
    quiet = stream.getvalue()
    now[0] = 5.0
    printer(ReplayProgress(4, 10, 5.0))
    printer(ReplayProgress(10, 10, 6.0))
    printer(ReplayProgress(10, 10, 6.0))

    assert quiet == ""
    assert stream.getvalue().splitlines() == [
        "replay: 4/10 orders done after 5 s, 0.8 orders/s",
        "replay: 10/10 orders done after 6 s, 1.7 orders/s",
    ]


def test_progress_printer_bar() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, bar=True)

    printer(ReplayProgress(1, 2, 1.0))
    printer(ReplayProgress(2, 2, 2.0))
    printer.close()

    assert stream.getvalue().count("\r") == 2
    assert stream.getvalue().endswith("2/2 orders, 1.0 orders/s\n")
