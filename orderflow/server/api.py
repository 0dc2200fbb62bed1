"""The HTTP API: routes from paths to the async engine, and JSON in and out.

Every handler validates its input before it touches the engine, so bad input
never reaches the database; errors become problem documents with the stable
codes of ``orderflow.errors``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import anyio

from .. import core
from ..aio import AsyncEngine
from ..errors import InvalidRequest, NotFound, OrderflowError, StorageError, Unauthorized
from ..models import Event, dumps
from .config import ServerConfig, TokenInfo
from .http import Request, Response, problem_response

__all__ = ["Api"]

logger = logging.getLogger(__name__)

Handler = Callable[[Request, TokenInfo | None, str], Awaitable[Response]]


class _MethodNotAllowed(OrderflowError):
    status = 405
    code = "invalid_request"
    title = "Method not allowed"


class Api:
    """The request handlers of one server."""

    def __init__(self, engine: AsyncEngine, config: ServerConfig) -> None:
        self.engine = engine
        self.config = config
        self._screen_page: bytes | None = None
        self._screen_script: bytes | None = None

    # Dispatch.

    async def handle(self, request: Request) -> Response:
        """Route ``request`` to its handler; every ``OrderflowError`` becomes a problem document."""
        try:
            handler, argument = self._route(request)
            auth = self.authenticate(request) if handler not in self._public else None
            return await handler(request, auth, argument)
        except OrderflowError as error:
            if isinstance(error, StorageError):
                logger.warning("%s %s failed: %s", request.method, request.path, error)
            headers = []
            if isinstance(error, Unauthorized):
                headers.append(("www-authenticate", 'Bearer realm="orderflow"'))
            if isinstance(error, _MethodNotAllowed):
                headers.append(("allow", error.detail.rsplit(": ", 1)[-1]))
            return problem_response(error, headers)
        except Exception:
            # A bug must cost one request a 500, not the whole server.
            logger.exception("%s %s failed with an unexpected error", request.method, request.path)
            return problem_response(
                OrderflowError("the server failed to handle this request; see its log")
            )

    @property
    def _public(self) -> set[Handler]:
        return {self.healthz, self.screen, self.screen_script, self.lifecycle}

    def _route(self, request: Request) -> tuple[Handler, str]:
        path = request.path
        method = request.method
        routes: dict[str, Handler]
        argument = ""
        if path == "/orders/active":
            routes = {"GET": self.active}
        elif path == "/orders":
            routes = {"POST": self.create}
        elif path.startswith("/orders/"):
            rest = path[len("/orders/") :]
            if rest.endswith("/transitions"):
                argument = rest[: -len("/transitions")]
                routes = {"POST": self.transition}
            elif rest.endswith("/events"):
                argument = rest[: -len("/events")]
                routes = {"GET": self.history}
            else:
                argument = rest
                routes = {"GET": self.get_order, "PATCH": self.update}
            if not argument or "/" in argument:
                raise NotFound(f"no resource at {path}")
        elif path == "/events":
            routes = {"GET": self.events}
        elif path == "/healthz":
            routes = {"GET": self.healthz}
        elif path == "/lifecycle":
            routes = {"GET": self.lifecycle}
        elif path in ("/", "/screen"):
            routes = {"GET": self.screen}
        elif path == "/static/screen.js":
            routes = {"GET": self.screen_script}
        else:
            raise NotFound(f"no resource at {path}; see the API paths in the README")
        handler = routes.get(method) or (routes.get("GET") if method == "HEAD" else None)
        if handler is None:
            raise _MethodNotAllowed(
                f"{method} is not allowed on {path}; allowed: {', '.join(sorted(routes))}"
            )
        return handler, argument

    def location(self, value: str) -> str:
        """Validate a location name and check it against the server's list, if it has one."""
        location = core.validate_location(value)
        allowed = self.config.locations
        if allowed is not None and location not in allowed:
            raise NotFound(
                f"location {location!r} is not served here; this server serves "
                f"{', '.join(sorted(allowed))}"
            )
        return location

    def authenticate(self, request: Request) -> TokenInfo | None:
        """Return the token holder, or None when the server needs no token."""
        tokens = self.config.tokens
        if not tokens:
            return None
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            token = request.query.get("token", "") if request.path == "/ws" else ""
        if not token:
            raise Unauthorized(
                "this server requires a bearer token: send 'Authorization: Bearer <token>'"
            )
        for known, info in tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                return info
        raise Unauthorized("the bearer token is not valid for this server")

    # Reads.

    async def active(self, request: Request, auth: TokenInfo | None, _: str) -> Response:
        location = self.location(request.query.get("location", "main"))
        feed = await self.engine.feed(location)
        # Read your writes: wait for this node's own commits to reach the feed.
        committed = self.engine.sync.committed_heads.get(location, 0)
        if feed.head < committed:
            with anyio.move_on_after(1.0):
                await feed.wait_for_head(committed)
        if feed.head < committed:
            snapshot = await self.engine.snapshot(location)
            return Response.json(200, json.dumps(snapshot.to_dict(), ensure_ascii=False))
        return Response.json(200, feed.snapshot_json())

    async def get_order(self, request: Request, auth: TokenInfo | None, order_id: str) -> Response:
        order = await self.engine.get(order_id)
        return Response.json(200, order.to_json())

    async def history(self, request: Request, auth: TokenInfo | None, order_id: str) -> Response:
        events = await self.engine.history(order_id)
        return Response.json(200, '{"events":[' + _join_events(events) + "]}")

    async def events(self, request: Request, auth: TokenInfo | None, _: str) -> Response:
        query = request.query
        if "since" not in query:
            raise InvalidRequest("since", "is required: GET /events?since=<last seq you have>")
        since = _int_param(query, "since", minimum=0)
        limit = _int_param(query, "limit", minimum=1, default=1000)
        location = self.location(query.get("location", "main"))
        epoch = query.get("epoch") or None
        page = await self.engine.events_since(since, location=location, epoch=epoch, limit=limit)
        body = (
            f'{{"epoch":{dumps(page.epoch)},"head":{page.head},"events":['
            + _join_events(page.events)
            + "]}"
        )
        return Response.json(200, body)

    async def healthz(self, request: Request, auth: TokenInfo | None, _: str) -> Response:
        health = await self.engine.health()
        document: dict[str, Any] = {
            "status": "degraded" if health.storage_ok and not health.broker.ok else "ok",
            "storage": "ok" if health.storage_ok else health.storage_detail,
            "broker": "ok" if health.broker.ok else health.broker.detail,
            "heads": health.heads,
        }
        if not health.storage_ok:
            document["status"] = "down"
            return Response.json(503, dumps(document))
        return Response.json(200, dumps(document))

    async def lifecycle(self, request: Request, auth: TokenInfo | None, _: str) -> Response:
        return Response.json(
            200, json.dumps(self.engine.lifecycle.to_mapping(), ensure_ascii=False)
        )

    async def screen(self, request: Request, auth: TokenInfo | None, _: str) -> Response:
        if self._screen_page is None:
            self._screen_page = (
                resources.files("orderflow").joinpath("static/screen.html").read_bytes()
            )
        return Response(200, self._screen_page, "text/html; charset=utf-8")

    async def screen_script(self, request: Request, auth: TokenInfo | None, _: str) -> Response:
        if self._screen_script is None:
            self._screen_script = (
                resources.files("orderflow").joinpath("static/screen.js").read_bytes()
            )
        return Response(200, self._screen_script, "text/javascript; charset=utf-8")

    # Writes.

    async def create(self, request: Request, auth: TokenInfo | None, _: str) -> Response:
        body = request.json()
        parsed = core.parse_new_order(body)
        self.location(parsed.location)
        key = _idempotency_key(request)
        actor = auth.actor if auth is not None else parsed.actor
        order = await self.engine.create(
            parsed.items,
            id=parsed.id,
            location=parsed.location,
            meta=parsed.meta,
            actor=actor,
            idempotency_key=key,
        )
        return Response.json(201, order.to_json(), [("location", f"/orders/{order.id}")])

    async def transition(self, request: Request, auth: TokenInfo | None, order_id: str) -> Response:
        body = request.json()
        parsed = core.parse_transition(order_id, body, self.engine.lifecycle)
        key = _idempotency_key(request)
        order = await self.engine.transition(
            parsed.order_id,
            parsed.to,
            expected_version=parsed.expected_version,
            reason=parsed.reason,
            actor=auth.actor if auth is not None else parsed.actor,
            roles=auth.roles if auth is not None else None,
            idempotency_key=key,
        )
        return Response.json(200, order.to_json())

    async def update(self, request: Request, auth: TokenInfo | None, order_id: str) -> Response:
        body = request.json()
        parsed = core.parse_update(order_id, body)
        key = _idempotency_key(request)
        order = await self.engine.update(
            parsed.order_id,
            items=parsed.items,
            meta=parsed.meta,
            expected_version=parsed.expected_version,
            actor=auth.actor if auth is not None else parsed.actor,
            idempotency_key=key,
        )
        return Response.json(200, order.to_json())


def _join_events(events: Any) -> str:
    return ",".join(event.to_json() for event in events if isinstance(event, Event))


def _idempotency_key(request: Request) -> str | None:
    key = request.header("idempotency-key")
    return None if key is None else core.validate_idempotency_key(key)


def _int_param(
    query: dict[str, str], name: str, *, minimum: int, default: int | None = None
) -> int:
    raw = query.get(name)
    if raw is None:
        if default is None:
            raise InvalidRequest(name, "is required")
        return default
    # isdigit() alone also accepts digits that int() rejects, such as "²".
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise InvalidRequest(name, f"must be a whole number of at least {minimum}, not {raw!r}")
    value = int(raw)
    if value < minimum:
        raise InvalidRequest(name, f"must be at least {minimum}, not {value}")
    return value
