"""The benchmark summary: its tables, the machine, the versions, and the files it is written to."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


# Tables.


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    header: str
    digits: int = 0


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    method: str
    columns: tuple[Column, ...]


_GOAL_COLUMNS = (Column("goal", "goal"), Column("result", "result"))

TABLES: dict[str, Table] = {
    "commit": Table(
        "Commit throughput",
        "Transitions per second through orderflow.Engine against raw drivers running the "
        "same statements in the same transaction and round-trip structure; ratio is the "
        "median of per-round ratios (each round runs the raw batch, then the engine batch).",
        (
            Column("case", "case"),
            Column("orderflow", "orderflow tx/s"),
            Column("raw", "raw tx/s"),
            Column("ratio", "ratio", 2),
            *_GOAL_COLUMNS,
        ),
    ),
    "locations": Table(
        "PostgreSQL locations",
        "Writers of different locations lock different counter rows, so they must not "
        "wait for each other.",
        (
            Column("case", "case"),
            Column("value", "orderflow tx/s"),
            Column("baseline_case", "baseline"),
            Column("baseline", "baseline tx/s"),
            Column("ratio", "ratio", 2),
            Column("note", "note"),
        ),
    ),
    "recovery": Table(
        "Recovery",
        "Screen.last_recovery: from the start of the reconnect to a mirror consistent with "
        "the head the server announced. p50 and p99 are the median over three blocks of "
        "rounds of each block's percentile; the last p99 column pools every sample.",
        (
            Column("active", "active orders"),
            Column("missed", "missed events"),
            Column("mode", "by"),
            Column("p50_ms", "p50 ms", 2),
            Column("p99_ms", "p99 ms", 2),
            Column("pooled_p99_ms", "all-samples p99 ms", 2),
            Column("samples", "samples"),
            Column("design_ratio", "p99 / 20 ms", 2),
            Column("floor_ratio", "p50 / floor", 1),
            *_GOAL_COLUMNS,
        ),
    ),
    "fanout_latency": Table(
        "Fan-out latency",
        "From the event's commit timestamp to its arrival at each screen, one event at a "
        "time; baseline: the plain websockets server sending the same payload. p50 and p99 "
        "are the median over three blocks of rounds of each block's percentile.",
        (
            Column("broker", "broker"),
            Column("screens", "screens"),
            Column("p50_ms", "p50 ms", 2),
            Column("p99_ms", "p99 ms", 2),
            Column("pooled_p99_ms", "all-samples p99 ms", 2),
            Column("plain_p50_ms", "plain p50 ms", 2),
            Column("plain_p99_ms", "plain p99 ms", 2),
            Column("ratio", "p99 ratio", 1),
            *_GOAL_COLUMNS,
        ),
    ),
    "fanout_throughput": Table(
        "Fan-out throughput",
        "Events delivered per second to all screens in a burst committed in one "
        "transaction, against the plain websockets server broadcasting the same payloads.",
        (
            Column("broker", "broker"),
            Column("screens", "screens"),
            Column("orderflow", "orderflow deliveries/s"),
            Column("plain", "plain deliveries/s"),
            Column("ratio", "ratio", 2),
            *_GOAL_COLUMNS,
        ),
    ),
    "memory": Table(
        "Memory",
        "Resident memory (VmRSS) of the server process.",
        (
            Column("case", "case"),
            Column("value", "orderflow"),
            Column("baseline", "baseline"),
            Column("ratio", "ratio", 2),
            *_GOAL_COLUMNS,
        ),
    ),
    "replay": Table(
        "Real data",
        "run_replay of the pizza-place orders at max speed with screens attached; baseline: "
        "Engine.transition on SQLite in the same process and run, with no server.",
        (
            Column("case", "case"),
            Column("value", "value"),
            Column("baseline", "baseline"),
            Column("ratio", "ratio", 3),
            Column("note", "note"),
        ),
    ),
}


def _format_cell(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def render_markdown(summary: Mapping[str, Any]) -> str:
    """Render a summary (the content of summary.json) as Markdown tables."""
    machine = summary["machine"]
    lines = [
        "# orderflow benchmark summary",
        "",
        f"Written by `{summary['command']}` on {summary['finished']} "
        f"({summary['size']} sizes, {summary['duration_s']:.0f} s).",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']:.1f} GiB, {machine['os']} (kernel {machine['kernel']})",
        f"- Load average (1, 5, 15 min): {summary['load_start']} at the start, "
        f"{summary['load_end']} at the end",
        "- Versions: "
        + ", ".join(f"{name} {version}" for name, version in summary["versions"].items()),
        "",
    ]
    for table_id, table in TABLES.items():
        rows = summary["tables"].get(table_id, [])
        if not rows:
            continue
        lines += [f"## {table.title}", "", table.method, ""]
        columns = [column for column in table.columns if any(column.key in row for row in rows)]
        lines.append("| " + " | ".join(column.header for column in columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        for row in rows:
            cells = [_format_cell(row.get(column.key), column.digits) for column in columns]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [row["detail"] for row in rows if row.get("detail")]
        if notes:
            lines.append("")
            lines.extend(f"- {note}" for note in notes)
        lines.append("")
    for title, key in (("Failed", "failed"), ("Skipped", "skipped")):
        if summary.get(key):
            lines += [f"## {title}", ""]
            lines.extend(
                f"- {item['table']} {item['case']}: {item['reason']}" for item in summary[key]
            )
            lines.append("")
    goals = [
        row
        for rows in summary["tables"].values()
        for row in rows
        if isinstance(row.get("met"), bool)
    ]
    met = sum(1 for row in goals if row["met"])
    lines += [f"Goals: {met} of {len(goals)} met.", ""]
    return "\n".join(lines)


def write_summary(directory: Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write summary.json and summary.md into ``directory``; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "summary.json"
    markdown_path = directory / "summary.md"
    json_path.write_text(json.dumps(summary, indent=1, sort_keys=False) + "\n")
    markdown_path.write_text(render_markdown(summary))
    return json_path, markdown_path


# The machine and the versions.


def _first_match(path: str, prefix: str) -> str | None:
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if ":" in line else line
    except OSError:
        return None
    return None


def machine_info() -> dict[str, Any]:
    """Describe the CPU, cores, memory and operating system of this machine."""
    memory_kib = _first_match("/proc/meminfo", "MemTotal")
    pretty = _first_match("/etc/os-release", "PRETTY_NAME=")
    os_name = pretty.split("=", 1)[1].strip('"\n') if pretty else platform.system()
    return {
        "cpu": _first_match("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": int(memory_kib.split()[0]) / 1024 / 1024 if memory_kib else 0.0,
        "os": os_name,
        "kernel": platform.release(),
        "machine": platform.machine(),
    }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


_LIBRARIES = (
    "anyio",
    "h11",
    "wsproto",
    "sqlite-utils",
    "psycopg",
    "psycopg-pool",
    "redis",
    "websockets",
    "pytest",
    "pytest-benchmark",
)


def versions(postgres_url: str | None, redis_url: str | None) -> dict[str, str]:
    """Return the versions of Python, the databases, orderflow and the key libraries."""
    found = {
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL": _postgres_version(postgres_url),
        "Redis": _redis_version(redis_url),
    }
    commit = _git("rev-parse", "--short", "HEAD")
    changed = _git("status", "--porcelain", "--untracked-files=no")
    orderflow = metadata.version("orderflow")
    if commit:
        orderflow += f" (git {commit}{', with uncommitted changes' if changed else ''})"
    found["orderflow"] = orderflow
    for name in _LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _postgres_version(url: str | None) -> str:
    if not url:
        return "not used (ORDERFLOW_TEST_POSTGRES_URL unset)"
    import psycopg

    from orderflow.storage.postgres import split_url

    try:
        with psycopg.connect(split_url(url)[0], connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        return f"unreachable ({exc})"
    return str(row[0]) if row else "unknown"


def _redis_version(url: str | None) -> str:
    if not url:
        return "not used (ORDERFLOW_TEST_REDIS_URL unset)"
    import redis

    try:
        client = redis.Redis.from_url(url.split("?", 1)[0], socket_timeout=5)
        try:
            return str(client.info("server")["redis_version"])
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"unreachable ({exc})"
