"""The Python examples in README.md run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_support import ServerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
DEFAULT_URL = "http://127.0.0.1:8080"


def run_example(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


def test_embedding_examples_run(tmp_path: Path) -> None:
    """The engine examples need no server; they run in order in one folder."""
    embedded = [block for block in BLOCKS if DEFAULT_URL not in block]
    assert embedded
    outputs = []
    for block in embedded:
        result = run_example(block, tmp_path)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert "PREPARING 3" in outputs[0]
    assert "stale: 1 is not 3" in outputs[0]
    assert (tmp_path / "kitchen.db").exists()


def test_screen_example_runs_against_server(tmp_path: Path) -> None:
    """The client example runs against a real server; only its URL changes."""
    screen_blocks = [block for block in BLOCKS if DEFAULT_URL in block]
    assert len(screen_blocks) == 1
    with ServerProcess(f"sqlite:///{tmp_path / 'server.db'}") as server:
        code = screen_blocks[0].replace(DEFAULT_URL, server.url)
        result = run_example(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"1 active orders, digest [0-9a-f]{16}", result.stdout)


@pytest.mark.parametrize("command", ["serve", "demo", "replay", "lifecycle", "new-epoch"])
def test_every_command_has_help(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orderflow", command, "--help"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "usage: orderflow" in result.stdout
    assert "--help" in result.stdout
