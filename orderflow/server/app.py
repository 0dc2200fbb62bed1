"""The server: accepts connections, routes HTTP requests, runs screens, shuts down cleanly."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import anyio
import anyio.abc
from wsproto.events import RejectConnection
from wsproto.utilities import RemoteProtocolError

from ..aio import AsyncEngine
from ..errors import ConfigurationError, InvalidRequest, OrderflowError, StorageError
from .api import Api
from .config import ServerConfig
from .http import HttpConnection, ProtocolFailure, Request, Response, problem_response
from .websocket import WebSocketSession

__all__ = ["Server"]

logger = logging.getLogger(__name__)

# Seconds a resuming screen waits for this node's feed to reach its seq
# before it gets a snapshot instead.
CATCH_UP_TIMEOUT = 1.0


class _ServerBusy(OrderflowError):
    status = 503
    code = "server_busy"
    title = "Server busy"


class Server:
    """An HTTP and WebSocket server over one ``AsyncEngine``.

    Run it with ``await server.serve()`` inside a task group, or with
    ``task_group.start(server.serve)``, which returns the URL it listens on.
    ``shutdown()`` stops accepting, sends every screen ``resync`` with reason
    ``shutdown``, lets requests in flight finish (up to ``shutdown_grace``
    seconds) and then returns from ``serve``.
    """

    def __init__(self, engine: AsyncEngine, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.api = Api(engine, self.config)
        self.url = ""
        self._ids = itertools.count(1)
        self._connections = 0
        self._busy_requests = 0
        self._sessions: set[WebSocketSession] = set()
        self._stopping = anyio.Event()
        self._drained = anyio.Event()

    def _check_drained(self) -> None:
        if self._stopping.is_set() and not self._sessions and not self._busy_requests:
            self._drained.set()

    @property
    def connection_count(self) -> int:
        return self._connections

    @property
    def sessions(self) -> set[WebSocketSession]:
        return set(self._sessions)

    def shutdown(self) -> None:
        """Start a graceful shutdown; ``serve`` returns when it is done."""
        self._stopping.set()

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.config.host, local_port=self.config.port
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigurationError(
                f"cannot listen on {self.config.host}:{self.config.port}: {reason}; "
                "stop the other server or choose another --host or --port"
            ) from exc
        address: Any = listener.extra(anyio.abc.SocketAttribute.local_address)
        host, port = address[0], address[1]
        shown = f"[{host}]" if ":" in str(host) else host
        self.url = f"http://{shown}:{port}"
        logger.info(
            "orderflow server listening on %s (storage %s, broker %s)",
            self.url,
            self.engine.sync.storage.url,
            self.engine.sync.broker.url,
        )
        task_status.started(self.url)

        accepting = anyio.CancelScope()
        accept_stopped = anyio.Event()
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._accept, listener, task_group, accepting, accept_stopped)
            await self._stopping.wait()
            accepting.cancel()
            await accept_stopped.wait()

            logger.info(
                "shutting down: %d connections, %d screens", self._connections, len(self._sessions)
            )
            await listener.aclose()
            for session in list(self._sessions):
                session.stop("shutdown")
            self._check_drained()
            with anyio.move_on_after(self.config.shutdown_grace):
                await self._drained.wait()
            task_group.cancel_scope.cancel()
        logger.info("orderflow server on %s stopped", self.url)

    async def _accept(
        self,
        listener: anyio.abc.Listener[Any],
        task_group: anyio.abc.TaskGroup,
        scope: anyio.CancelScope,
        stopped: anyio.Event,
    ) -> None:
        try:
            with scope:
                await listener.serve(self._handle, task_group=task_group)
        finally:
            stopped.set()

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        connection_id = f"c{next(self._ids)}"
        if self._connections >= self.config.max_connections:
            logger.warning(
                "rejected connection %s: %d connections are open (max_connections)",
                connection_id,
                self._connections,
            )
            await self._reject_busy(stream, connection_id)
            return
        self._connections += 1
        try:
            await self._serve_connection(stream, connection_id)
        except (
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
            OSError,
            TimeoutError,
        ) as exc:
            logger.debug("connection %s ended: %r", connection_id, exc)
        except Exception:
            # A bug must cost one connection, not the whole server.
            logger.exception("connection %s failed with an unexpected error", connection_id)
        finally:
            self._connections -= 1
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _reject_busy(self, stream: anyio.abc.SocketStream, connection_id: str) -> None:
        http = HttpConnection(stream, self.config, connection_id)
        error = _ServerBusy(
            f"the server has {self.config.max_connections} connections open (its limit); retry later"
        )
        response = problem_response(error, [("retry-after", "1")])
        response.close = True
        try:
            with anyio.move_on_after(1.0):
                request = await http.next_request()
                if request is not None:
                    await http.send(response)
        except (ProtocolFailure, OSError, anyio.BrokenResourceError, TimeoutError):
            pass
        finally:
            await stream.aclose()

    async def _serve_connection(self, stream: anyio.abc.SocketStream, connection_id: str) -> None:
        http = HttpConnection(stream, self.config, connection_id)
        while not self._stopping.is_set():
            try:
                request = await http.next_request()
            except ProtocolFailure as failure:
                if failure.response is not None:
                    logger.info(
                        "connection %s: rejected a malformed request with %d",
                        connection_id,
                        failure.response.status,
                    )
                await http.send_failure(failure)
                return
            if request is None:
                return
            if request.path == "/ws" and _wants_websocket(request):
                await self._serve_websocket(http, request, connection_id)
                return

            self._busy_requests += 1
            try:
                response = await self.api.handle(request)
            finally:
                self._busy_requests -= 1
                self._check_drained()
            if self._stopping.is_set():
                response.close = True
            await http.send(response, head_only=request.method == "HEAD")
            if response.close or not http.can_continue():
                return

    async def _serve_websocket(
        self, http: HttpConnection, request: Request, connection_id: str
    ) -> None:
        try:
            self.api.authenticate(request)
            location = self.api.location(request.query.get("location", "main"))
            since = _optional_int(request.query.get("since"), "since")
            epoch = request.query.get("epoch") or None
            feed = await self.engine.feed(location)
            if since is not None:
                # The feed learns of pruning only when it reloads, so the
                # retained range is read from the log. Below it, a snapshot.
                position = await self.engine.position(location)
                if since < position.oldest:
                    since = None
                elif feed.head < since <= position.head and epoch == feed.epoch:
                    # The screen comes from a node that is ahead of this
                    # one. Catch up first, so that it resumes instead of
                    # taking a snapshot older than what it already shows.
                    await feed.catch_up_to(since, CATCH_UP_TIMEOUT)
        except OrderflowError as error:
            if isinstance(error, StorageError):
                logger.warning("screen %s rejected: %s", connection_id, error)
            response = problem_response(error)
            response.close = True
            await http.send(response)
            return

        session = WebSocketSession(http.stream, self.config, connection_id, feed)
        try:
            handshake = session.accept(request, http.h11.trailing_data[0])
        except RemoteProtocolError as exc:
            logger.info("connection %s: rejected a WebSocket handshake: %s", connection_id, exc)
            await http.send(_handshake_failure(exc))
            return
        with anyio.fail_after(self.config.send_timeout):
            await http.stream.send(handshake)
        logger.info(
            "screen %s connected to location %r (since=%s, epoch=%s)",
            connection_id,
            location,
            since,
            epoch,
        )
        self._sessions.add(session)
        try:
            if self._stopping.is_set():
                session.stop("shutdown")
            await session.run(since, epoch)
        finally:
            self._sessions.discard(session)
            self._check_drained()


def _handshake_failure(exc: RemoteProtocolError) -> Response:
    """Build the problem response to an upgrade request that wsproto rejected."""
    error = InvalidRequest("handshake", f"invalid WebSocket handshake: {exc}")
    headers: list[tuple[str, str]] = []
    hint = exc.event_hint
    if isinstance(hint, RejectConnection):
        # 426 with Sec-WebSocket-Version for an unsupported version, else 400.
        error.status = hint.status_code
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in hint.headers
        ]
    else:
        error.status = 400
    response = problem_response(error, headers)
    response.close = True
    return response


def _wants_websocket(request: Request) -> bool:
    upgrade = (request.header("upgrade") or "").lower()
    return request.method == "GET" and upgrade == "websocket"


def _optional_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    # isdigit() alone also accepts digits that int() rejects, such as "²".
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise InvalidRequest(name, f"must be a whole number of at least 0, not {value!r}")
    return int(value)
