"""HTTP/1.1 on one connection: h11 for the protocol, anyio for the socket.

``HttpConnection`` reads requests with their limits and timeouts enforced
and writes responses; it has no notion of orders. A request that breaks
a limit is answered with a problem document and the connection is closed,
because an unread body or a broken head leaves no safe place to continue.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import anyio.abc
import h11

from ..errors import InvalidRequest, OrderflowError, PayloadTooLarge
from .config import ServerConfig

__all__ = ["HttpConnection", "ProtocolFailure", "Request", "Response", "problem_response"]

logger = logging.getLogger(__name__)

READ_SIZE = 65536


class ProtocolFailure(Exception):
    """A request that cannot be answered normally; respond with ``response`` and close."""

    def __init__(self, response: Response | None) -> None:
        super().__init__(response.status if response else "closed")
        self.response = response


@dataclass(slots=True)
class Request:
    """One parsed request. Header names are lower case (h11 normalises them)."""

    method: str
    path: str
    query: dict[str, str]
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    target: str = ""

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    def json(self) -> Any:
        """Decode the body as JSON in UTF-8; raise ``InvalidJSON`` otherwise."""
        from ..errors import InvalidJSON

        if not self.body:
            raise InvalidJSON("the request body is empty; send a JSON object")
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJSON(f"the request body is not valid UTF-8 at byte {exc.start}") from None
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidJSON("the request body nests arrays or objects too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False

    @classmethod
    def json(cls, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status, text.encode(), "application/json", headers or [])


def problem_response(
    error: OrderflowError, headers: list[tuple[str, str]] | None = None
) -> Response:
    """Build an RFC 9457 problem document for ``error``."""
    document: dict[str, Any] = {
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
    }
    document.update(error.problem_extensions())
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(error.status, body, "application/problem+json", headers or [])


def _reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _timeout_response(detail: str) -> Response:
    document = {
        "title": "Request timeout",
        "status": 408,
        "detail": detail,
        "code": "invalid_request",
    }
    body = json.dumps(document, separators=(",", ":")).encode()
    return Response(408, body, "application/problem+json", close=True)


class _HeaderTooLarge(PayloadTooLarge):
    status = 431
    title = "Request header fields too large"


def _head_size(event: h11.Request) -> int:
    """Return the size of a request head as sent, less optional whitespace h11 stripped."""
    size = len(event.method) + 1 + len(event.target) + len(b" HTTP/1.1\r\n") + 2
    for name, value in event.headers:
        size += len(name) + 2 + len(value) + 2
    return size


class HttpConnection:
    """Requests and responses on one client connection."""

    def __init__(
        self, stream: anyio.abc.ByteStream, config: ServerConfig, connection_id: str
    ) -> None:
        self.stream = stream
        self.config = config
        self.id = connection_id
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self.requests = 0

    async def next_request(self) -> Request | None:
        """Read the next request, body included; None when the client is done.

        Raises ``ProtocolFailure`` with the response to send for a request
        that breaks the protocol or a limit.
        """
        wait = self.config.header_timeout if self.requests == 0 else self.config.idle_timeout
        event = await self._read_head(wait)
        if event is None or isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise ProtocolFailure(None)
        self.requests += 1

        # h11 enforces max_header_bytes only while a head is incomplete, so a
        # whole head that arrives in one read is measured here.
        if _head_size(event) > self.config.max_header_bytes:
            raise ProtocolFailure(
                problem_response(
                    _HeaderTooLarge(
                        self.config.max_header_bytes,
                        f"the request head is larger than {self.config.max_header_bytes} bytes",
                    )
                )
            )
        if len(event.headers) > self.config.max_header_count:
            raise ProtocolFailure(
                problem_response(
                    _HeaderTooLarge(
                        self.config.max_header_count,
                        f"the request has {len(event.headers)} header fields; the limit is "
                        f"{self.config.max_header_count}",
                    )
                )
            )
        target = event.target.decode("latin-1")
        parts = urlsplit(target)
        try:
            query = dict(parse_qsl(parts.query, keep_blank_values=True, errors="strict"))
            path = unquote(parts.path, errors="strict")
        except UnicodeDecodeError:
            raise ProtocolFailure(
                problem_response(
                    InvalidRequest("target", "is not valid UTF-8 after percent-decoding")
                )
            ) from None
        request = Request(
            method=event.method.decode("ascii", "replace"),
            path=path,
            query=query,
            headers=list(event.headers),
            target=target,
        )
        request.body = await self._read_body(request)
        return request

    async def _read_head(self, wait: float) -> Any:
        """Return the next h11 event of a request head, or None if none starts in time.

        ``wait`` bounds the time until the first byte. From the first byte on,
        the whole head must arrive within ``header_timeout``, so a client that
        sends one byte a second is dropped.
        """
        now = anyio.current_time()
        idle_deadline = now + wait
        head_deadline: float | None = None
        while True:
            event = self._next_event()
            if event is not h11.NEED_DATA:
                return event
            if head_deadline is None and self._has_buffered():
                head_deadline = anyio.current_time() + self.config.header_timeout
            deadline = head_deadline if head_deadline is not None else idle_deadline
            with anyio.move_on_after(max(deadline - anyio.current_time(), 0)) as scope:
                data = await self._receive()
            if scope.cancelled_caught:
                if head_deadline is None:
                    return None
                raise ProtocolFailure(
                    _timeout_response("the request head was not received in time")
                )
            if head_deadline is None:
                head_deadline = anyio.current_time() + self.config.header_timeout
            self.h11.receive_data(data)

    def _next_event(self) -> Any:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise ProtocolFailure(self._protocol_error(exc)) from None

    def _has_buffered(self) -> bool:
        return bool(self.h11.trailing_data[0])

    async def _receive(self) -> bytes:
        try:
            return await self.stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return b""

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> Response:
        if exc.error_status_hint == 431:
            error: OrderflowError = _HeaderTooLarge(
                self.config.max_header_bytes,
                f"the request head is larger than {self.config.max_header_bytes} bytes",
            )
        else:
            error = InvalidRequest("request", f"malformed HTTP request: {exc}")
            error.status = exc.error_status_hint
        return problem_response(error)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        length = request.header("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ProtocolFailure(problem_response(PayloadTooLarge(limit)))
        if self.h11.they_are_waiting_for_100_continue:
            # The client sends the body only after it reads 100 Continue.
            interim = self.h11.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            with anyio.fail_after(self.config.send_timeout):
                await self.stream.send(interim)
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.config.body_timeout) as scope:
            while True:
                event = self._next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self._receive())
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        raise ProtocolFailure(problem_response(PayloadTooLarge(limit)))
                    chunks.append(event.data)
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    break
                else:
                    raise ProtocolFailure(None)
        if scope.cancelled_caught:
            raise ProtocolFailure(_timeout_response("the request body was not received in time"))
        return b"".join(chunks)

    async def send(self, response: Response, *, head_only: bool = False) -> None:
        """Write ``response``; close the connection afterwards if it must close.

        With ``head_only``, for a response to a HEAD request, the head
        carries the body's Content-Length and the body is not sent.
        """
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        if response.close:
            headers.append(("connection", "close"))
        try:
            head = h11.Response(
                status_code=response.status, headers=headers, reason=_reason_phrase(response.status)
            )
            data = self.h11.send(head) or b""
            if not head_only:
                data += self.h11.send(h11.Data(data=response.body)) or b""
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # The connection is in no state for a response (for example the
            # client broke the protocol mid-request); just close it.
            raise ProtocolFailure(None) from None
        with anyio.fail_after(self.config.send_timeout):
            await self.stream.send(data)

    def can_continue(self) -> bool:
        """Prepare for the next request on this connection, if keep-alive allows it."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    async def send_failure(self, failure: ProtocolFailure) -> None:
        """Send the response of a ``ProtocolFailure`` if the protocol state allows it."""
        response = failure.response
        if response is None:
            return
        response.close = True
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(ProtocolFailure, OSError, TimeoutError, anyio.BrokenResourceError):
            await self.send(response)
