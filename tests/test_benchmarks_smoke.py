"""The benchmarks at tiny sizes, so they keep running; the figures come from benchmarks/run.py.

One run of ``python benchmarks/run.py --size smoke`` in a child process,
shared by the tests below. The benchmarks use PostgreSQL, Redis and the
pizza-place data set when the tests' own variables point at them. Without
them those benchmarks skip, and the summary lists them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

SMOKE_TIMEOUT = 300
TABLES = ("commit", "recovery", "fanout_latency", "fanout_throughput", "memory", "replay")


@dataclass(frozen=True)
class SmokeRun:
    process: subprocess.CompletedProcess[str]
    output: Path

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.output / "summary.json").read_text())
        return data

    def failure(self) -> str:
        return f"stdout:\n{self.process.stdout[-4000:]}\nstderr:\n{self.process.stderr[-4000:]}"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    output = tmp_path_factory.mktemp("bench-smoke")
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")
    }
    process = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--size", "smoke", "--output", str(output), "-q"],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )
    return SmokeRun(process, output)


def test_smoke_run_passes(smoke_run: SmokeRun) -> None:
    assert smoke_run.process.returncode == 0, smoke_run.failure()


@pytest.mark.parametrize("table", TABLES)
def test_smoke_table_filled_or_skipped(smoke_run: SmokeRun, table: str) -> None:
    summary = smoke_run.summary()
    rows = summary["tables"].get(table, [])
    benchmark = table.split("_")[0]
    skipped = [item for item in summary["skipped"] if item["table"] == benchmark]
    assert rows or skipped, f"no rows and no skip for {table}:\n{smoke_run.failure()}"


def test_smoke_nothing_failed(smoke_run: SmokeRun) -> None:
    assert smoke_run.summary()["failed"] == []


def test_smoke_goals_have_results(smoke_run: SmokeRun) -> None:
    rows = [row for rows in smoke_run.summary()["tables"].values() for row in rows]
    unchecked = [row for row in rows if "goal" in row and not isinstance(row.get("met"), bool)]
    assert not unchecked


def test_smoke_markdown_written(smoke_run: SmokeRun) -> None:
    markdown = (smoke_run.output / "summary.md").read_text()
    assert markdown.startswith("# orderflow benchmark summary")


def test_smoke_raw_json_written(smoke_run: SmokeRun) -> None:
    raw = json.loads((smoke_run.output / "raw" / "pytest-benchmark.json").read_text())
    assert raw["benchmarks"]
