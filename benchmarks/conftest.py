"""Options and fixtures of the benchmarks, which the default test run leaves out.

Run every benchmark and write the summary with ``python benchmarks/run.py``,
or with pytest directly:

    pytest benchmarks --bench-summary benchmarks/results

``--bench-size smoke`` runs each benchmark at tiny sizes, which is what
tests/test_benchmarks_smoke.py does. PostgreSQL and Redis benchmarks use
ORDERFLOW_TEST_POSTGRES_URL and ORDERFLOW_TEST_REDIS_URL, as the tests do,
and skip without them; every skip is listed in the summary.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from benchmarks._summary import load_average, machine_info, versions
from benchmarks._support import SIZES, Recorder, Sizes

_RECORDER = pytest.StashKey[Recorder]()
_STARTED = pytest.StashKey[tuple[float, str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("orderflow benchmarks")
    group.addoption(
        "--bench-size",
        choices=sorted(SIZES),
        default="full",
        help="full makes the published figures; smoke runs each benchmark at tiny sizes",
    )
    group.addoption(
        "--bench-summary",
        type=Path,
        default=None,
        metavar="DIR",
        help="write summary.json and summary.md into DIR when the session ends",
    )


# The session's config, for the report hook, which is not given it.
_CONFIG: dict[str, pytest.Config] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RECORDER] = Recorder()
    config.stash[_STARTED] = (time.monotonic(), load_average())
    _CONFIG["config"] = config


@pytest.fixture(scope="session")
def sizes(pytestconfig: pytest.Config) -> Sizes:
    return SIZES[pytestconfig.getoption("--bench-size")]


@pytest.fixture(scope="session")
def recorder(pytestconfig: pytest.Config) -> Recorder:
    return pytestconfig.stash[_RECORDER]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the databases, payload files and helper logs of this session."""
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    from tests.conftest import service_url

    return service_url("ORDERFLOW_TEST_POSTGRES_URL", "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    from tests.conftest import service_url

    return service_url("ORDERFLOW_TEST_REDIS_URL", "Redis")


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL with a schema of its own, dropped afterwards."""
    from tests.pg_support import fresh_schema_url

    with fresh_schema_url(postgres_url) as url:
        yield url


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Skipped and failed benchmarks are listed in the summary with the reason.
    config = _CONFIG.get("config")
    if config is None or not (report.skipped or report.failed):
        return
    module = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
    benchmark = module.removeprefix("test_").removesuffix(".py")
    case = report.nodeid.split("::", 1)[-1]
    recorder = config.stash[_RECORDER]
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        recorder.skip(benchmark, case, reason)
    elif report.failed:
        message = report.longreprtext.strip().splitlines()
        recorder.fail(benchmark, case, f"{report.when}: {message[-1] if message else 'failed'}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    directory = config.getoption("--bench-summary")
    if directory is None:
        return
    from benchmarks._summary import write_summary

    recorder = config.stash[_RECORDER]
    started, load_start = config.stash[_STARTED]
    command = os.environ.get("ORDERFLOW_BENCH_COMMAND") or "pytest " + " ".join(sys.argv[1:])
    summary: dict[str, Any] = {
        "command": command,
        "size": config.getoption("--bench-size"),
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.monotonic() - started,
        "exit_status": int(exitstatus),
        "machine": machine_info(),
        "load_start": load_start,
        "load_end": load_average(),
        "versions": versions(
            os.environ.get("ORDERFLOW_TEST_POSTGRES_URL"),
            os.environ.get("ORDERFLOW_TEST_REDIS_URL"),
        ),
        "tables": recorder.rows,
        "skipped": recorder.skipped,
        "failed": recorder.failed,
    }
    write_summary(Path(directory), summary)
