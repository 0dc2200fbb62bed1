"""Shared fixtures and the switches that turn on database and broker tests.

PostgreSQL and Redis tests run when their URL is set and skip otherwise:

    ORDERFLOW_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test
    ORDERFLOW_TEST_REDIS_URL=redis://127.0.0.1:6379/15

With ORDERFLOW_TEST_REQUIRE_SERVICES=1 (set by .ci/run) a missing URL or an
unreachable server fails the run instead of skipping.

Hypothesis uses the ``ci`` profile (bounded examples, no per-example
deadline, because a loaded 2-core machine makes timings noisy) unless
HYPOTHESIS_PROFILE names another one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from orderflow import Engine

settings.register_profile(
    "ci",
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=20, stateful_step_count=20, deadline=None)
settings.register_profile(
    "thorough", max_examples=500, stateful_step_count=60, deadline=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRE_SERVICES = os.environ.get("ORDERFLOW_TEST_REQUIRE_SERVICES") == "1"


def service_url(variable: str, what: str) -> str:
    """Return the URL in ``variable``, or skip (fail in CI) with how to set it."""
    url = os.environ.get(variable)
    if url:
        return url
    message = (
        f"{what} tests need a server: set {variable} "
        f"(for example {variable}={_EXAMPLES[variable]}) to run them"
    )
    if REQUIRE_SERVICES:
        pytest.fail(message + "; ORDERFLOW_TEST_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


_EXAMPLES = {
    "ORDERFLOW_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1:5432/test",
    "ORDERFLOW_TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
}


def pizza_data_dir() -> Path:
    """Return the folder of the pizza-place data set, or skip when it is absent."""
    configured = os.environ.get("ORDERFLOW_PIZZA_DATA")
    folder = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "pizza-place"
    if not (folder / "order_lines.csv").is_file():
        pytest.skip(
            f"the pizza-place data set is not at {folder}; set ORDERFLOW_PIZZA_DATA to the "
            "folder that holds order_lines.csv and pizza_types.csv"
        )
    return folder


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every async test runs on asyncio and on trio, with readable ids.
    if "anyio_backend" in metafunc.fixturenames:
        metafunc.parametrize("anyio_backend", ["asyncio", "trio"], indirect=True)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'orderflow.db'}"


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    with Engine.open(sqlite_url) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind: a SQLite file, or a PostgreSQL schema.

    The PostgreSQL variant gives each test its own schema (``?schema=``) on
    the server named by ORDERFLOW_TEST_POSTGRES_URL and drops it afterwards.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'orderflow.db'}"
        return
    from tests.pg_support import fresh_schema_url

    base = service_url("ORDERFLOW_TEST_POSTGRES_URL", "PostgreSQL")
    with fresh_schema_url(base) as url:
        yield url
