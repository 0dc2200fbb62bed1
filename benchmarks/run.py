"""Run every orderflow benchmark and write the summary.

    python benchmarks/run.py [--size full|smoke] [--output DIR] [pytest options...]

It runs ``pytest benchmarks`` with pytest-benchmark, writes
``summary.json`` and ``summary.md`` into ``--output`` (default:
benchmarks/results) and pytest-benchmark's own JSON into ``DIR/raw/``
(ignored by git), then prints the Markdown summary. PostgreSQL and Redis
are taken from ORDERFLOW_TEST_POSTGRES_URL and ORDERFLOW_TEST_REDIS_URL, or
from ``--postgres-url`` and ``--redis-url``; without them those benchmarks
are skipped and the summary lists them. Options it does not know go to
pytest, for example ``-k fanout``. The exit code is pytest's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=["full", "smoke"],
        default="full",
        help="full makes the published figures (about 10 minutes on 2 cores); "
        "smoke runs each benchmark at tiny sizes (default: full)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=BENCHMARKS / "results",
        help="folder for summary.json and summary.md (default: benchmarks/results)",
    )
    parser.add_argument("--postgres-url", help="PostgreSQL server for the benchmarks")
    parser.add_argument("--redis-url", help="Redis server for the benchmarks")
    arguments, pytest_options = parser.parse_known_args(argv)

    environment = dict(os.environ)
    if arguments.postgres_url:
        environment["ORDERFLOW_TEST_POSTGRES_URL"] = arguments.postgres_url
    if arguments.redis_url:
        environment["ORDERFLOW_TEST_REDIS_URL"] = arguments.redis_url
    command_line = ["python benchmarks/run.py"]
    if arguments.size != "full":
        command_line.append(f"--size {arguments.size}")
    environment["ORDERFLOW_BENCH_COMMAND"] = " ".join([*command_line, *pytest_options])

    output = arguments.output.resolve()
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(BENCHMARKS),
        "--bench-size",
        arguments.size,
        "--bench-summary",
        str(output),
        "--benchmark-json",
        str(output / "raw" / "pytest-benchmark.json"),
        "--benchmark-columns",
        "min,median,max,rounds",
        "--benchmark-sort",
        "name",
        *pytest_options,
    ]
    (output / "raw").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    finished = subprocess.run(command, cwd=REPO_ROOT, env=environment, check=False)
    elapsed = time.monotonic() - started

    summary = output / "summary.md"
    if summary.is_file():
        print()
        print(summary.read_text())
    print(f"benchmarks took {elapsed:.0f} s; summary in {output}", file=sys.stderr)
    return finished.returncode


if __name__ == "__main__":
    sys.exit(main())
