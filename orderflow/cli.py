"""The ``orderflow`` command: parse arguments, call the library, map errors to exit codes.

Exit codes: 0 success, 1 a runtime failure (database unreachable, a check
that found a mismatch), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from . import __version__, demo, replay
from .errors import ConfigurationError, LifecycleError, OrderflowError
from .feed import FeedOptions

__all__ = ["main"]

logger = logging.getLogger("orderflow.cli")

DATABASE_VARIABLE = "ORDERFLOW_DATABASE_URL"
BROKER_VARIABLE = "ORDERFLOW_BROKER_URL"
DEFAULT_DATABASE = "sqlite:///orderflow.db"
DEFAULT_BROKER = "memory://"

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        default=os.environ.get(DATABASE_VARIABLE, DEFAULT_DATABASE),
        help=(
            "database URL: sqlite:///path.db or postgresql://user@host/dbname "
            f"(default: ${DATABASE_VARIABLE} or {DEFAULT_DATABASE})"
        ),
    )
    parser.add_argument(
        "--broker",
        metavar="URL",
        default=os.environ.get(BROKER_VARIABLE, DEFAULT_BROKER),
        help=(
            "broker URL: memory:// (one process) or redis://host:6379/0 "
            f"(default: ${BROKER_VARIABLE} or {DEFAULT_BROKER})"
        ),
    )
    parser.add_argument(
        "--lifecycle",
        metavar="FILE",
        type=Path,
        help="order lifecycle as a .json or .toml file (default: the restaurant lifecycle)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderflow",
        description="Restaurant order flow: an order engine with screens that stay in step.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=LOG_LEVELS,
        help="how much the command logs to stderr (default: INFO)",
    )
    parser.add_argument("--version", action="version", version=f"orderflow {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP and WebSocket server",
        description="Run the HTTP API and the WebSocket feed until SIGINT or SIGTERM.",
    )
    _add_connection_options(serve)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=8080,
        help="TCP port to listen on; 0 picks a free one (default: 8080)",
    )
    serve.add_argument(
        "--tokens",
        metavar="FILE",
        type=Path,
        help=(
            'JSON file mapping bearer tokens to {"actor": name, "roles": [...]}; '
            "when given, every API call needs a token (default: no authentication)"
        ),
    )
    serve.add_argument(
        "--location",
        dest="locations",
        action="append",
        metavar="NAME",
        help=(
            "serve only this location; repeat for several (default: any valid name, "
            "created on first use)"
        ),
    )
    serve.add_argument(
        "--max-replay",
        type=int,
        default=1000,
        metavar="N",
        help=(
            "maximum number of events a reconnecting screen may have missed and still "
            "resume; more get a snapshot (default: 1000)"
        ),
    )
    serve.add_argument(
        "--heartbeat",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between heartbeats on an idle WebSocket (default: 10)",
    )
    serve.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="seconds of broker silence after which the feed reads the event log (default: 0.5)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        metavar="N",
        help="maximum number of open client connections; more get HTTP 503 (default: 1000)",
    )
    serve.set_defaults(run=_run_serve)

    lifecycle = commands.add_parser(
        "lifecycle",
        help="check a lifecycle file and print it",
        description="Validate a lifecycle and print it as a Mermaid diagram or as JSON.",
    )
    lifecycle.add_argument(
        "file",
        nargs="?",
        type=Path,
        help="lifecycle .json or .toml (default: the restaurant lifecycle)",
    )
    lifecycle.add_argument(
        "--format",
        choices=["mermaid", "json"],
        default="mermaid",
        help="output format (default: mermaid)",
    )
    lifecycle.set_defaults(run=_run_lifecycle)

    epoch = commands.add_parser(
        "new-epoch",
        help="give a location's event log a new epoch (after restoring a backup)",
        description=(
            "Start a new epoch for a location, so every screen takes a snapshot instead of "
            "resuming. Run it after restoring the database from a backup."
        ),
    )
    _add_connection_options(epoch)
    epoch.add_argument("--location", default="main", help="location to reset (default: main)")
    epoch.set_defaults(run=_run_new_epoch)

    demo.add_command(commands)
    replay.add_command(commands)

    # Accept --log-level after the command too (orderflow serve --log-level DEBUG).
    for command in commands.choices.values():
        command.add_argument(
            "--log-level",
            choices=LOG_LEVELS,
            default=argparse.SUPPRESS,
            help="how much the command logs to stderr (default: INFO)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:
        # Errors raised inside task groups arrive wrapped in exception groups.
        error = _first_leaf(exc)
        if isinstance(error, (ConfigurationError, LifecycleError)):
            print(f"orderflow: {error}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(error, OrderflowError):
            print(f"orderflow: {error}", file=sys.stderr)
            return EXIT_FAILURE
        if isinstance(error, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    """Return the first exception inside nested exception groups (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _load_tokens(path: Path | None) -> dict[str, object]:
    from .server import TokenInfo

    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the tokens file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"the tokens file {path} must hold a JSON object")
    tokens: dict[str, object] = {}
    for token, holder in data.items():
        if not isinstance(holder, dict) or not isinstance(holder.get("actor"), str):
            raise ConfigurationError(
                f'token entries in {path} must look like {{"actor": "ana", "roles": ["kitchen"]}}'
            )
        roles = holder.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
            raise ConfigurationError(
                f"the roles of actor {holder['actor']!r} in {path} must be a list of strings"
            )
        tokens[token] = TokenInfo(holder["actor"], frozenset(roles))
    return tokens


def _run_serve(args: argparse.Namespace) -> int:
    from .aio import AsyncEngine
    from .server import Server, ServerConfig

    config = ServerConfig(
        host=args.host,
        port=args.port,
        max_replay=args.max_replay,
        heartbeat_interval=args.heartbeat,
        max_connections=args.max_connections,
        feed=FeedOptions(poll_interval=args.poll_interval),
        tokens=_load_tokens(args.tokens),  # type: ignore[arg-type]
        locations=frozenset(args.locations) if args.locations else None,
    )

    async def serve() -> None:
        async with AsyncEngine.open(
            args.db, args.broker, lifecycle=args.lifecycle, feed_options=config.feed
        ) as engine:
            server = Server(engine, config)
            async with anyio.create_task_group() as task_group:
                url = await task_group.start(server.serve)
                print(f"orderflow listening on {url}", flush=True)
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        logger.info("received %s, shutting down", signal.Signals(signum).name)
                        server.shutdown()
                        break

    anyio.run(serve)
    return EXIT_OK


def _run_lifecycle(args: argparse.Namespace) -> int:
    from .engine import load_lifecycle

    lifecycle = load_lifecycle(args.file)
    if args.format == "json":
        print(json.dumps(lifecycle.to_mapping(), indent=2, ensure_ascii=False))
    else:
        print(lifecycle.to_mermaid(), end="")
    return EXIT_OK


def _run_new_epoch(args: argparse.Namespace) -> int:
    from .engine import Engine

    with Engine.open(args.db, "memory://", lifecycle=args.lifecycle) as engine:
        epoch = engine.new_epoch(args.location)
    print(f"location {args.location!r} now has epoch {epoch}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
