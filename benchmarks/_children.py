"""Helper processes: children that reply with one JSON line to each JSON command line.

The orderflow node, the screens and the plain broadcast server are
modules of this package run with ``python -m``. Each reads commands on
stdin and writes its replies on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


class ChildError(RuntimeError):
    """A helper process failed, replied with an error, or did not reply in time."""


class Child:
    """A helper process that replies with one JSON line to each JSON command line.

    Its first line reports that it is ready (``{"ready": true, ...}``), and
    ``wait_ready`` returns it. Its stderr goes to ``log_path``, and error
    messages end with the last lines written there.
    """

    def __init__(self, module: str, args: Sequence[str], log_path: Path) -> None:
        self.name = f"{module} {' '.join(args)}"
        self.log_path = log_path
        environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=REPO_ROOT,
                env=environment,
            )
        self._buffer = b""
        self.ready: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        if self.ready is None:
            self.ready = self.read(timeout)
        return self.ready

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-20:])

    def read(self, timeout: float) -> dict[str, Any]:
        """Return the next JSON line; raise ``ChildError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        stdout = self.process.stdout
        if stdout is None:
            raise ChildError(f"{self.name} has no stdout")
        descriptor = stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildError(
                    f"{self.name} sent no reply within {timeout} s; its log:\n{self._log_tail()}"
                )
            readable, _, _ = select.select([descriptor], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(descriptor, 1 << 20)
            if not chunk:
                self.process.wait(5)
                raise ChildError(
                    f"{self.name} exited with code {self.process.returncode}; its log:\n"
                    f"{self._log_tail()}"
                )
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise ChildError(f"{self.name} failed: {reply['error']}; its log:\n{self._log_tail()}")
        return reply

    def send(self, command: Mapping[str, Any]) -> None:
        stdin = self.process.stdin
        if stdin is None:
            raise ChildError(f"{self.name} has no stdin")
        stdin.write(json.dumps(command).encode() + b"\n")
        stdin.flush()

    def call(self, command: Mapping[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send ``command`` and return the reply."""
        self.send(command)
        return self.read(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Ask the process to quit; terminate it (by its pid) if it does not."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.send({"cmd": "quit"})
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def start_children(children: Iterable[Child], timeout: float = 60.0) -> None:
    """Wait until every child is ready; they start at once, so their imports overlap."""
    for child in children:
        child.wait_ready(timeout)


def rss_kib(pid: int) -> int:
    """Return the resident set size (VmRSS) of process ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ChildError(f"process {pid} has no VmRSS line")
