"""Crash tests: a writer process killed with SIGKILL in the middle of a burst.

A child process writes orders as fast as it can and prints one JSON line per
change only after the engine has returned it. The parent kills the child
once it has read a number of lines, then opens the file. Every printed
change must be in the log, seq must have no gap, each order row must equal
the replay of its events, and SQLite's integrity check must pass. The same
file goes through several kills, each after another number of lines.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from orderflow import Engine
from tests.test_sqlite_concurrency import Ack, check_log, unacknowledged

REPO_ROOT = Path(__file__).resolve().parent.parent

# Bounded waits, in seconds.
WAIT = 30.0
# Kill after this many printed changes, one kill per number, on the same file.
KILL_AFTER = (1, 7, 23, 60, 160, 400)
# A change that committed but whose line was never printed can only belong
# to the child's last transaction, which makes at most two changes.
MAX_CHANGES_PER_TRANSACTION = 2

# The child: it opens the engine with the URL in argv[1], prints the
# connection's PRAGMA synchronous, then makes up to argv[3] changes seeded
# by argv[2], and prints each change after the call that made it returned.
CHILD = """
import json
import random
import sys

sys.path.insert(0, {repo!r})

from orderflow import DEFAULT_LIFECYCLE, Engine

NEXT_STATE = {{
    "PENDING": "CONFIRMED",
    "CONFIRMED": "PREPARING",
    "PREPARING": "READY",
    "READY": "COMPLETED",
}}
ITEMS = [{{"name": "Diavola", "quantity": 2, "station": "oven"}}]

url, seed, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
engine = Engine.open(url)
# The test reads the private writer connection to prove that the URL option
# reached SQLite.
(synchronous,) = engine.storage._writer_connection().execute(
    "PRAGMA synchronous"
).fetchone()
print(json.dumps({{"synchronous": synchronous}}), flush=True)

# Orders left active by an earlier, killed child are moved on too.
active = [order for location in ("main", "patio") for order in engine.snapshot(location).orders]


def acknowledge(*orders):
    for order in orders:
        print(order.to_json(), flush=True)


for step in range(limit):
    roll = rng.random()
    location = rng.choice(("main", "patio"))
    if roll < 0.25 or not active:
        created = engine.create(ITEMS, location=location, meta={{"seed": seed, "step": step}})
        acknowledge(created)
        active.append(created)
    elif roll < 0.4:
        with engine.transaction() as tx:
            created = tx.create(ITEMS, location=location, meta={{"seed": seed, "step": step}})
            confirmed = tx.transition(created.id, "CONFIRMED", expected_version=1)
        acknowledge(created, confirmed)
        active.append(confirmed)
    elif roll < 0.5:
        index = rng.randrange(len(active))
        updated = engine.update(
            active[index].id,
            meta={{"seed": seed, "step": step}},
            expected_version=active[index].version,
        )
        acknowledge(updated)
        active[index] = updated
    else:
        index = rng.randrange(len(active))
        order = active[index]
        moved = engine.transition(
            order.id, NEXT_STATE[order.state], expected_version=order.version
        )
        acknowledge(moved)
        if DEFAULT_LIFECYCLE.is_active(moved.state):
            active[index] = moved
        else:
            active.pop(index)
engine.close()
"""


class Child:
    """A burst writer in a subprocess, with its stdout lines read on a thread."""

    def __init__(self, script: Path, url: str, seed: int, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        with open(stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(script), url, str(seed), "50000"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name=f"child-{seed}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            # A line cut short by the kill was never acknowledged.
            if line.endswith("\n"):
                self.lines.put(line)
        self.lines.put(None)

    def next_line(self, deadline: float) -> dict[str, Any]:
        """Return the next printed line, decoded; fail if the child ended or went quiet."""
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"the child printed nothing more within {WAIT} s")
        if line is None:
            pytest.fail(
                f"the child exited with {self.process.wait(WAIT)} before it was killed; "
                f"its stderr is in {self.stderr_path}"
            )
        decoded: dict[str, Any] = json.loads(line)
        return decoded

    def kill(self) -> list[Ack]:
        """Kill the child with SIGKILL and return the changes it printed after the last read."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(WAIT)
        self.reader.join(WAIT)
        rest: list[Ack] = []
        while (line := self.lines.get_nowait()) is not None:
            rest.append(json.loads(line))
        return rest

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(WAIT)
        self.reader.join(WAIT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.stop()


def integrity(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


@pytest.mark.parametrize(
    ("query", "synchronous"),
    [("", 2), ("?synchronous=normal", 1)],
    ids=["synchronous=full", "synchronous=normal"],
)
def test_kill_mid_burst(
    tmp_path: Path, children: list[Child], query: str, synchronous: int
) -> None:
    script = tmp_path / "burst.py"
    script.write_text(CHILD.format(repo=str(REPO_ROOT)))
    db_path = tmp_path / "orderflow.db"
    url = f"sqlite:///{db_path}{query}"
    acks: list[Ack] = []
    unacknowledged_before = 0

    for seed, kill_after in enumerate(KILL_AFTER):
        child = Child(script, url, seed, tmp_path / f"child-{seed}.stderr")
        children.append(child)
        deadline = time.monotonic() + WAIT
        assert child.next_line(deadline) == {"synchronous": synchronous}
        printed = [child.next_line(deadline) for _ in range(kill_after)]
        printed += child.kill()
        acks.extend(printed)

        assert child.process.returncode == -signal.SIGKILL
        assert integrity(db_path) == ["ok"]
        with Engine.open(url) as engine:
            log = check_log(engine, db_path, acks)
        unacknowledged_now = len(unacknowledged(log, acks))
        assert unacknowledged_now - unacknowledged_before <= MAX_CHANGES_PER_TRANSACTION
        unacknowledged_before = unacknowledged_now
