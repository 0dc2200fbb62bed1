"""Tests of ``orderflow demo``: the command, ``run_demo`` and the screen comparison.

The broken runs use a mirror that counts PREPARING events as applied but
leaves the order as it was: the lost-message bug the demo exists to catch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from orderflow import cli
from orderflow.client import Mirror, Screen
from orderflow.demo import compare_mirror, percentile, run_demo
from orderflow.digest import digest_of
from orderflow.errors import ConfigurationError
from tests.conftest import REPO_ROOT

RECOVERY_LINE = re.compile(
    r"recovery: p50 ([0-9.]+) ms, max ([0-9.]+) ms \(target 20 ms: (met|missed)\)"
)


class LosingMirror(Mirror):
    """A mirror that takes every PREPARING event as applied without applying it."""

    def apply(self, event: Mapping[str, Any]) -> bool:
        if event["seq"] == self.last + 1 and event["order"]["state"] == "PREPARING":
            self.last = event["seq"]
            return True
        return super().apply(event)


def losing_screen(urls: str, *, location: str, name: str) -> Screen:
    screen = Screen(urls, location=location, name=name)
    screen.mirror = LosingMirror()
    return screen


# The command.


def test_demo_command_matches() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orderflow", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    output = result.stdout

    assert result.returncode == 0, output + result.stderr
    assert "resume from the screen's seq" in output
    assert "fetch on reconnect" in output
    assert output.count("screen matched the database in 20 of 20 rounds") == 2
    assert "result: OK" in output


def test_demo_command_numbers_parse() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orderflow", "demo", "--rounds", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    figures = RECOVERY_LINE.findall(result.stdout)

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(figures) == 2
    for p50, worst, _ in figures:
        assert 0 < float(p50) <= float(worst)


def test_demo_command_mismatch_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every Screen the command builds gets the losing mirror.
    monkeypatch.setattr("orderflow.client.Mirror", LosingMirror)

    code = cli.main(["demo", "--rounds", "2"])
    captured = capsys.readouterr()

    assert code == 1
    assert "MISMATCH in round 1" in captured.out
    assert "result: FAILED" in captured.out
    assert "did not match the database (resume)" in captured.err


def test_demo_command_rejects_zero_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["demo", "--rounds", "0"])

    assert code == 2
    assert "rounds must be at least 1" in capsys.readouterr().err


# run_demo on both backends.


@pytest.mark.anyio
async def test_run_demo_matches() -> None:
    report = await run_demo(rounds=3)

    assert report.ok
    assert [result.approach for result in report.approaches] == ["resume", "fetch"]
    for result in report.approaches:
        assert result.matched_rounds == 3
        assert len(result.recoveries_ms) == 3
        assert all(value > 0 for value in result.recoveries_ms)


@pytest.mark.anyio
async def test_run_demo_losing_mirror_fails() -> None:
    report = await run_demo(rounds=2, screen_factory=losing_screen)
    resume = report.approach("resume")
    problems = " ".join(problem for r in resume.rounds for problem in r.problems)

    assert not report.ok
    assert resume.matched_rounds == 0
    assert "CONFIRMED v2, but PREPARING v3 in the database" in problems
    assert "digest" in problems
    # Fetching rebuilds the mirror from the database, so it hides the loss.
    assert report.approach("fetch").ok


@pytest.mark.anyio
async def test_run_demo_rejects_zero_rounds() -> None:
    with pytest.raises(ConfigurationError, match="rounds must be at least 1"):
        await run_demo(rounds=0)


# The comparison and the percentile.


def _active(orders: dict[str, tuple[str, int]], head: int = 7, epoch: str = "e1") -> dict[str, Any]:
    return {
        "location": "main",
        "epoch": epoch,
        "head": head,
        "digest": digest_of((order_id, version) for order_id, (_, version) in orders.items()),
        "orders": [
            {"id": order_id, "state": state, "version": version}
            for order_id, (state, version) in orders.items()
        ],
    }


BASE = {"a": ("PENDING", 1), "b": ("PREPARING", 3)}


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        pytest.param(_active(BASE), [], id="same"),
        pytest.param(
            _active({**BASE, "c": ("READY", 4)}),
            ["order c is missing (database: READY v4)", "digest"],
            id="missing",
        ),
        pytest.param(
            _active({"a": ("PENDING", 1)}),
            ["order b (PREPARING v3) is not active in the database", "digest"],
            id="extra",
        ),
        pytest.param(
            _active({"a": ("CONFIRMED", 1), "b": ("PREPARING", 3)}),
            ["order a is PENDING v1, but CONFIRMED v1 in the database"],
            id="state",
        ),
        pytest.param(
            _active({"a": ("PENDING", 2), "b": ("PREPARING", 3)}),
            ["order a is PENDING v1, but PENDING v2 in the database", "digest"],
            id="version",
        ),
        pytest.param(_active(BASE, head=8), ["at seq 7, but the database head is 8"], id="head"),
        pytest.param(_active(BASE, epoch="e2"), ["epoch e1, but the database"], id="epoch"),
    ],
)
def test_compare_mirror(database: dict[str, Any], expected: list[str]) -> None:
    mirror = Mirror()
    mirror.load_snapshot(_active(BASE))

    problems = compare_mirror(mirror, database)

    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


def test_compare_mirror_wrong_digest() -> None:
    mirror = Mirror()
    mirror.load_snapshot(_active(BASE))
    database = {**_active(BASE), "digest": "0000000000000001"}

    assert compare_mirror(mirror, database) == [
        f"digest {mirror.digest}, but the database digest is 0000000000000001"
    ]


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([], 0.5, None),
        ([4.0], 0.99, 4.0),
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([float(n) for n in range(1, 101)], 0.5, 50.0),
        ([float(n) for n in range(1, 101)], 0.99, 99.0),
        ([float(n) for n in range(1, 101)], 1.0, 100.0),
    ],
)
def test_percentile(values: list[float], fraction: float, expected: float | None) -> None:
    assert percentile(values, fraction) == expected
