"""Protocol limits of the HTTP server, tested with bytes written by hand.

Each test starts a server with small limits and timeouts in ``ServerConfig``
and talks to it over plain TCP, so the test controls exactly what reaches the
server and when. The cases: oversized or too many header fields, a head sent
one byte at a time, idle keep-alive connections, too many connections,
pipelined requests, HEAD, and chunked bodies. The storage does not matter
here, so these tests use SQLite only.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from orderflow.server import ServerConfig
from tests.server_support import (
    RawConnection,
    RawResponse,
    http_request,
    raw_connection,
    raw_request,
    running_server,
)

pytestmark = pytest.mark.anyio

PROBLEM_TYPE = "application/problem+json"
ORDER = json.dumps({"items": [{"name": "Margherita", "quantity": 1}]}).encode()


def check_problem(response: RawResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, response.body
    assert response.headers["content-type"] == PROBLEM_TYPE
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["title"]
    assert problem["detail"]
    return problem


async def head_of_log(port: int) -> int:
    response = await raw_request(port, http_request("GET", "/events?since=0"))
    assert response.status == 200
    head: int = response.json()["head"]
    return head


# Request heads.


async def test_header_too_large(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_header_bytes=4096)) as server:
        request = http_request("GET", "/healthz", None, [("X-Filler", "a" * 8000)])

        async with raw_connection(server.port) as connection:
            await connection.send(request)
            response = await connection.read_response()
            rest = await connection.wait_closed()

        problem = check_problem(response, 431, "payload_too_large")
        assert "4096" in problem["detail"]
        assert rest == b""


async def test_header_too_large_slowly(sqlite_url: str) -> None:
    # The same head in small writes, so it is incomplete while it grows.
    async with running_server(sqlite_url, config=ServerConfig(max_header_bytes=4096)) as server:
        request = http_request("GET", "/healthz", None, [("X-Filler", "a" * 8000)])

        async with raw_connection(server.port) as connection:
            for start in range(0, len(request), 1000):
                try:
                    await connection.send(request[start : start + 1000])
                except (anyio.BrokenResourceError, OSError):
                    break
            response = await connection.read_response()

        check_problem(response, 431, "payload_too_large")


async def test_header_at_limit(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_header_bytes=4096)) as server:
        request = http_request("GET", "/healthz", None, [("X-Filler", "a" * 3000)])

        response = await raw_request(server.port, request)

        assert response.status == 200


async def test_too_many_headers(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_header_count=10)) as server:
        fields = [(f"X-Field-{number}", "1") for number in range(20)]

        async with raw_connection(server.port) as connection:
            await connection.send(http_request("GET", "/healthz", None, fields))
            response = await connection.read_response()
            rest = await connection.wait_closed()

        problem = check_problem(response, 431, "payload_too_large")
        assert "10" in problem["detail"]
        assert rest == b""


async def test_headers_at_count_limit(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_header_count=10)) as server:
        # Host is the tenth field.
        fields = [(f"X-Field-{number}", "1") for number in range(9)]

        response = await raw_request(server.port, http_request("GET", "/healthz", None, fields))

        assert response.status == 200


async def test_malformed_request_line(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        async with raw_connection(server.port) as connection:
            await connection.send(b"NOT AN HTTP REQUEST\r\n\r\n")
            response = await connection.read_response()
            await connection.wait_closed()

        check_problem(response, 400, "invalid_request")


# Timeouts.


async def test_slow_header_dropped(sqlite_url: str) -> None:
    config = ServerConfig(header_timeout=0.5)
    async with running_server(sqlite_url, config=config) as server:
        request = http_request("GET", "/healthz")
        # At one byte per 50 ms the whole head would take longer than 2 s.
        assert len(request) * 0.05 > 2.0
        responses: list[RawResponse] = []

        async with raw_connection(server.port) as connection:

            async def trickle() -> None:
                for byte in request:
                    if responses:
                        return
                    try:
                        await connection.send(bytes([byte]))
                    except (anyio.BrokenResourceError, OSError):
                        return
                    await anyio.sleep(0.05)

            started = anyio.current_time()
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(trickle)
                responses.append(await connection.read_response(timeout=5))
                elapsed = anyio.current_time() - started
                await connection.wait_closed()

        # A 408 means the server stopped waiting before the head was complete.
        check_problem(responses[0], 408, "invalid_request")
        assert elapsed >= 0.4


async def test_silent_client_dropped(sqlite_url: str) -> None:
    config = ServerConfig(header_timeout=0.5, idle_timeout=30)
    async with running_server(sqlite_url, config=config) as server:
        async with raw_connection(server.port) as connection:
            started = anyio.current_time()
            rest = await connection.wait_closed(timeout=5)
            elapsed = anyio.current_time() - started

        assert rest == b""
        assert elapsed >= 0.4
        assert elapsed < 3.0


async def test_idle_keepalive_closed(sqlite_url: str) -> None:
    config = ServerConfig(idle_timeout=0.5, header_timeout=30)
    async with running_server(sqlite_url, config=config) as server:
        async with raw_connection(server.port) as connection:
            await connection.send(http_request("GET", "/healthz"))
            response = await connection.read_response()
            started = anyio.current_time()
            rest = await connection.wait_closed(timeout=5)
            elapsed = anyio.current_time() - started

        assert response.status == 200
        assert "connection" not in response.headers
        assert rest == b""
        assert elapsed >= 0.4
        assert elapsed < 3.0


async def test_keepalive_within_idle(sqlite_url: str) -> None:
    config = ServerConfig(idle_timeout=2.0, header_timeout=0.1)
    async with running_server(sqlite_url, config=config) as server:
        async with raw_connection(server.port) as connection:
            statuses = []
            for _ in range(3):
                await connection.send(http_request("GET", "/healthz"))
                statuses.append((await connection.read_response()).status)
                # Idle for longer than header_timeout, well within idle_timeout.
                await anyio.sleep(0.2)

        assert statuses == [200, 200, 200]


async def test_slow_body_dropped(sqlite_url: str) -> None:
    config = ServerConfig(body_timeout=0.5)
    async with running_server(sqlite_url, config=config) as server:
        head = http_request("POST", "/orders", None, [("Content-Length", str(len(ORDER)))])

        async with raw_connection(server.port) as connection:
            await connection.send(head + ORDER[:10])
            response = await connection.read_response(timeout=5)
            await connection.wait_closed()

        check_problem(response, 408, "invalid_request")
        assert await head_of_log(server.port) == 0


# Connections.


async def test_max_connections(sqlite_url: str) -> None:
    config = ServerConfig(max_connections=2)
    async with (
        running_server(sqlite_url, config=config) as server,
        raw_connection(server.port) as first,
        raw_connection(server.port) as second,
    ):
        # A response on each proves the server counts both connections.
        for connection in (first, second):
            await connection.send(http_request("GET", "/healthz"))
            assert (await connection.read_response()).status == 200

        async with raw_connection(server.port) as third:
            await third.send(http_request("GET", "/healthz"))
            response = await third.read_response()
            await third.wait_closed()

        problem = check_problem(response, 503, "server_busy")
        assert response.headers["retry-after"] == "1"
        assert "2" in problem["detail"]

        await second.send(http_request("GET", "/healthz", None, [("Connection", "close")]))
        await second.read_response()
        await second.wait_closed()
        await wait_until_served(server.port)


async def wait_until_served(port: int, timeout: float = 5.0) -> None:
    """Retry a request until the server accepts a connection for it again."""
    with anyio.fail_after(timeout):
        for _ in range(int(timeout / 0.02)):
            response = await raw_request(port, http_request("GET", "/healthz"))
            if response.status == 200:
                return
            assert response.status == 503
            await anyio.sleep(0.02)
    raise TimeoutError(f"the server still responded with 503 after {timeout} s")


# Keep-alive, pipelining and HEAD.


async def test_pipelined_in_order(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        create = json.dumps({"id": "P-1", "items": [{"name": "Diavola", "quantity": 1}]}).encode()
        requests = (
            http_request("POST", "/orders", create)
            + http_request("GET", "/orders/P-1")
            + http_request("POST", "/orders/P-1/transitions", b'{"to": "CONFIRMED"}')
            + http_request("GET", "/orders/nope")
            + http_request("GET", "/orders/active")
        )

        async with raw_connection(server.port) as connection:
            await connection.send(requests)
            responses = [await connection.read_response() for _ in range(5)]

        assert [response.status for response in responses] == [201, 200, 200, 404, 200]
        assert responses[1].json()["version"] == 1
        assert responses[2].json()["version"] == 2
        active = responses[4].json()
        assert [(o["id"], o["version"]) for o in active["orders"]] == [("P-1", 2)]


async def test_pipelined_many(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        for number in range(10):
            body = json.dumps({"id": f"P-{number}", "items": [{"name": "x", "quantity": 1}]})
            await raw_request(server.port, http_request("POST", "/orders", body.encode()))
        order = [7, 2, 9, 0, 5, 5, 1]

        async with raw_connection(server.port) as connection:
            await connection.send(b"".join(http_request("GET", f"/orders/P-{n}") for n in order))
            responses = [await connection.read_response() for _ in order]

        assert [response.json()["id"] for response in responses] == [f"P-{n}" for n in order]


async def test_head_request(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        await raw_request(server.port, http_request("POST", "/orders", ORDER))

        async with raw_connection(server.port) as connection:
            await connection.send(
                http_request("HEAD", "/orders/active") + http_request("GET", "/orders/active")
            )
            head = await connection.read_response(head=True)
            get = await connection.read_response()

        assert head.status == 200
        assert head.headers["content-type"] == "application/json"
        assert head.headers["content-length"] == get.headers["content-length"]
        assert get.json()["head"] == 1


async def test_head_not_found(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        async with raw_connection(server.port) as connection:
            await connection.send(
                http_request("HEAD", "/orders/nope") + http_request("GET", "/healthz")
            )
            head = await connection.read_response(head=True)
            after = await connection.read_response()

        assert head.status == 404
        assert head.headers["content-type"] == PROBLEM_TYPE
        assert after.status == 200


# Expect: 100-continue.


async def test_expect_continue(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        headers = [("Content-Length", str(len(ORDER))), ("Expect", "100-continue")]

        async with raw_connection(server.port) as connection:
            # The body goes out only after the interim response, as a client
            # that honours Expect would send it.
            await connection.send(http_request("POST", "/orders", None, headers))
            interim = await connection.read_response()
            await connection.send(ORDER)
            final = await connection.read_response()

        assert interim.status == 100
        assert final.status == 201


async def test_expect_continue_too_large(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_body_bytes=1024)) as server:
        headers = [("Content-Length", "4096"), ("Expect", "100-continue")]

        async with raw_connection(server.port) as connection:
            await connection.send(http_request("POST", "/orders", None, headers))
            response = await connection.read_response()
            await connection.wait_closed()

        check_problem(response, 413, "payload_too_large")


# Chunked request bodies.


def chunked(body: bytes, size: int) -> bytes:
    """Encode ``body`` with chunked transfer coding, in chunks of ``size`` bytes."""
    out = b""
    for start in range(0, len(body), size):
        chunk = body[start : start + size]
        out += f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    return out + b"0\r\n\r\n"


async def test_chunked_body(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as server:
        head = http_request("POST", "/orders", None, [("Transfer-Encoding", "chunked")])

        async with raw_connection(server.port) as connection:
            await connection.send(head + chunked(ORDER, 7))
            response = await connection.read_response()
            await connection.send(http_request("GET", "/orders/active"))
            active = await connection.read_response()

        assert response.status == 201
        assert [order["id"] for order in active.json()["orders"]] == [response.json()["id"]]


async def test_chunked_too_large(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_body_bytes=1024)) as server:
        head = http_request("POST", "/orders", None, [("Transfer-Encoding", "chunked")])
        notes = "n" * 1000
        body = json.dumps({"items": [{"name": "x", "quantity": 1, "notes": notes}] * 2}).encode()
        assert len(body) > 1024

        async with raw_connection(server.port) as connection:
            await connection.send(head + chunked(body, 256))
            response = await connection.read_response()
            await connection.wait_closed()

        problem = check_problem(response, 413, "payload_too_large")
        assert problem["limit"] == 1024
        assert await head_of_log(server.port) == 0


async def test_body_at_limit(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_body_bytes=1024)) as server:
        body = json.dumps({"items": [{"name": "x", "quantity": 1}], "meta": {"pad": ""}})
        body = body.replace('"pad": ""', '"pad": "' + "p" * (1024 - len(body)) + '"')
        assert len(body) == 1024

        response = await raw_request(server.port, http_request("POST", "/orders", body.encode()))

        assert response.status == 201


async def test_content_length_too_large(sqlite_url: str) -> None:
    async with running_server(sqlite_url, config=ServerConfig(max_body_bytes=1024)) as server:
        head = http_request("POST", "/orders", None, [("Content-Length", "1025")])

        async with raw_connection(server.port) as connection:
            # The server must reject the request from its head alone.
            await connection.send(head)
            response = await connection.read_response()
            await connection.wait_closed()

        check_problem(response, 413, "payload_too_large")
        assert await head_of_log(server.port) == 0


async def test_closed_after_error(sqlite_url: str) -> None:
    # A request that breaks a limit leaves unread bytes behind, so the server
    # responds to it and closes without reading the next pipelined request.
    async with running_server(sqlite_url, config=ServerConfig(max_body_bytes=1024)) as server:
        head = http_request("POST", "/orders", None, [("Content-Length", "2048")])
        connection: RawConnection
        async with raw_connection(server.port) as connection:
            await connection.send(head + b"{" * 2048 + http_request("POST", "/orders", ORDER))
            response = await connection.read_response()
            rest = await connection.wait_closed()

        assert response.status == 413
        assert rest == b""
        assert await head_of_log(server.port) == 0
