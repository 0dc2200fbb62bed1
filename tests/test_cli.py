"""The orderflow command: exit codes and one clear line on stderr for bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def orderflow(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orderflow", *arguments],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = orderflow("serve", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--port", str(port))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"orderflow: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_unknown_database_scheme() -> None:
    result = orderflow("serve", "--db", "mysql://localhost/x", "--port", "0")
    assert result.returncode == 2
    assert "unsupported database URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_location_option() -> None:
    result = orderflow("serve", "--location", "bad/name", "--port", "0")
    assert result.returncode == 2
    assert "invalid location 'bad/name'" in result.stderr


def test_bad_tokens_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"secret": {"roles": ["kitchen"]}}))
    result = orderflow("serve", "--tokens", str(tokens), "--port", "0")
    assert result.returncode == 2
    assert '"actor"' in result.stderr


def test_version_flag() -> None:
    result = orderflow("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("orderflow ")


def test_log_level_after_command() -> None:
    result = orderflow("lifecycle", "--log-level", "WARNING")
    assert result.returncode == 0
    assert result.stdout.startswith("stateDiagram-v2")


def test_invalid_lifecycle_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text(
        json.dumps({"initial": "A", "states": ["A"], "terminal": [], "transitions": []})
    )
    result = orderflow("lifecycle", str(broken))
    assert result.returncode == 2
    assert "no terminal state" in result.stderr


def test_new_epoch_changes_epoch(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'epoch.db'}"
    first = orderflow("new-epoch", "--db", url)
    second = orderflow("new-epoch", "--db", url)
    assert first.returncode == 0
    assert second.returncode == 0
    assert first.stdout.split()[-1] != second.stdout.split()[-1]
