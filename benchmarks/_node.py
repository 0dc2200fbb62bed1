"""A helper process: one orderflow node that writes on command, with or without a server.

    python -m benchmarks._node --db URL --broker URL --location L [--location L2] [--serve]

With ``--serve`` it runs the same ``Server`` as ``orderflow serve`` on a
free loopback port and loads the feed of every location before it reports
ready, so the first screen does not pay for the load. It prints
``{"ready": true, "url": ...}`` and then replies with one JSON line to each
command line on stdin:

- ``{"cmd": "commit", "location": L, "count": n}``: n transactions of one
  transition each, one after the other;
- ``{"cmd": "burst", "location": L, "count": n}``: one transaction with n
  transitions, so n events commit at once;
- ``{"cmd": "quit"}``.

Both write commands reply ``{"seq": head}``. A serving node replies only
once its own feed has applied that event. The transitions move the
location's active orders between READY and PREPARING (a recall and its
remake), so every order stays active and every event has the same shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

import anyio
from anyio import to_thread

from orderflow.aio import AsyncEngine
from orderflow.engine import Transaction
from orderflow.feed import LocationFeed
from orderflow.server import Server, ServerConfig

_NEXT_STATE = {"READY": "PREPARING", "PREPARING": "READY"}


@dataclass
class _Toggle:
    """The active orders of one location with their state and version, moved in turn."""

    orders: list[tuple[str, str, int]]
    position: int = 0

    def move(self, transaction: Transaction) -> int:
        """Make one transition in ``transaction``; return the event's seq."""
        order_id, state, version = self.orders[self.position]
        moved = transaction.transition(
            order_id, _NEXT_STATE[state], expected_version=version, actor="bench"
        )
        self.orders[self.position] = (order_id, moved.state, moved.version)
        self.position = (self.position + 1) % len(self.orders)
        return transaction.events[-1].seq


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _load_toggles(engine: AsyncEngine, locations: list[str]) -> dict[str, _Toggle]:
    toggles = {}
    for location in locations:
        snapshot = await engine.snapshot(location)
        orders = [
            (order.id, order.state, order.version)
            for order in snapshot.orders
            if order.state in _NEXT_STATE
        ]
        if not orders:
            raise RuntimeError(f"location {location!r} has no READY or PREPARING orders to move")
        toggles[location] = _Toggle(orders)
    return toggles


async def _write(engine: AsyncEngine, toggle: _Toggle, count: int, *, one_transaction: bool) -> int:
    if one_transaction:

        def burst(transaction: Transaction) -> int:
            seq = 0
            for _ in range(count):
                seq = toggle.move(transaction)
            return seq

        return await engine.run_transaction(burst)
    seq = 0
    for _ in range(count):
        seq = await engine.run_transaction(toggle.move)
    return seq


async def _serve_commands(
    engine: AsyncEngine, toggles: dict[str, _Toggle], feeds: dict[str, LocationFeed]
) -> None:
    while True:
        line = await to_thread.run_sync(sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        name = command.get("cmd")
        if name == "quit":
            return
        try:
            if name not in ("commit", "burst"):
                raise ValueError(f"unknown command {name!r}")
            location = command["location"]
            seq = await _write(
                engine, toggles[location], int(command["count"]), one_transaction=name == "burst"
            )
            if location in feeds:
                await feeds[location].wait_for_head(seq)
        except Exception as exc:
            _reply({"error": f"{type(exc).__name__}: {exc}"})
            continue
        _reply({"seq": seq})


async def _main(arguments: argparse.Namespace) -> None:
    async with AsyncEngine.open(arguments.db, arguments.broker) as engine:
        toggles = await _load_toggles(engine, arguments.location)
        if not arguments.serve:
            _reply({"ready": True, "url": None})
            await _serve_commands(engine, toggles, {})
            return

        server = Server(engine, ServerConfig(host="127.0.0.1", port=0))
        async with anyio.create_task_group() as task_group:
            url = await task_group.start(server.serve)
            feeds = {location: await engine.feed(location) for location in arguments.location}
            _reply({"ready": True, "url": url})
            try:
                await _serve_commands(engine, toggles, feeds)
            finally:
                server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="database URL")
    parser.add_argument("--broker", default="memory://", help="broker URL")
    parser.add_argument("--location", action="append", required=True, help="a location to write to")
    parser.add_argument("--serve", action="store_true", help="run the HTTP and WebSocket server")
    arguments = parser.parse_args()
    try:
        anyio.run(_main, arguments)
    except Exception as exc:
        _reply({"error": f"{type(exc).__name__}: {exc}"})
        raise


if __name__ == "__main__":
    main()
