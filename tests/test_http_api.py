"""The HTTP API over real sockets: every endpoint, every error code, and bad input.

Each test runs a server in its own event loop (asyncio and trio) on a free
loopback port, on SQLite and on PostgreSQL. Success shapes are checked field
by field against the wire contract, and every error must be a problem
document (``application/problem+json``) with ``status``, ``title``,
``detail`` and ``code``. A rejected request must change nothing: the event
log and the active orders read the same before and after it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest

from orderflow.broker import BrokerHealth
from orderflow.client import HttpClient, HttpResponse
from orderflow.engine import Health
from orderflow.errors import StorageUnavailable
from orderflow.lifecycle import RESTAURANT_LIFECYCLE
from orderflow.server import ServerConfig, TokenInfo
from tests.server_support import (
    RunningServer,
    fnv1a_digest,
    http_request,
    raw_connection,
    raw_request,
    running_server,
)

pytestmark = pytest.mark.anyio

ITEMS = [{"name": "Margherita", "quantity": 2, "station": "oven"}]
ORDER_FIELDS = {"id", "location", "state", "version", "items", "meta", "created_at", "updated_at"}
EVENT_FIELDS = {
    "seq",
    "order_id",
    "kind",
    "from",
    "to",
    "version",
    "at",
    "actor",
    "reason",
    "order",
}
PROBLEM_TYPE = "application/problem+json"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\Z")
# The next state of an active order, recalling READY orders so they stay active.
NEXT_STATE = {
    "PENDING": "CONFIRMED",
    "CONFIRMED": "PREPARING",
    "PREPARING": "READY",
    "READY": "PREPARING",
}


@asynccontextmanager
async def api(database_url: str, **options: Any) -> AsyncIterator[tuple[RunningServer, HttpClient]]:
    """Run a server and open a keep-alive client to it."""
    async with (
        running_server(database_url, **options) as server,
        HttpClient(server.url) as client,
    ):
        yield server, client


async def create(client: HttpClient, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await client.request("POST", "/orders", body or {"items": ITEMS})
    assert response.status == 201, response.body
    order: dict[str, Any] = response.json()
    return order


async def move(client: HttpClient, order_id: str, to: str, **fields: Any) -> dict[str, Any]:
    response = await client.request("POST", f"/orders/{order_id}/transitions", {"to": to, **fields})
    assert response.status == 200, response.body
    order: dict[str, Any] = response.json()
    return order


async def complete(client: HttpClient, order_id: str) -> None:
    for state in ("CONFIRMED", "PREPARING", "READY", "COMPLETED"):
        await move(client, order_id, state)


async def log_state(client: HttpClient) -> tuple[Any, Any]:
    """Return the whole event log and the active orders, to compare before and after."""
    events = await client.request("GET", "/events?since=0&limit=10000")
    active = await client.request("GET", "/orders/active")
    assert events.status == 200, events.body
    assert active.status == 200, active.body
    return events.json(), active.json()


def check_problem(response: HttpResponse, status: int, code: str) -> dict[str, Any]:
    """Check that ``response`` is a problem document with ``status`` and ``code``."""
    assert response.status == status, response.body
    assert response.headers["content-type"] == PROBLEM_TYPE
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert isinstance(problem["title"], str)
    assert problem["title"]
    assert isinstance(problem["detail"], str)
    assert problem["detail"]
    return problem


def check_order(order: dict[str, Any]) -> None:
    assert set(order) == ORDER_FIELDS
    assert RFC3339_UTC.match(order["created_at"])
    assert RFC3339_UTC.match(order["updated_at"])


# Reads.


async def test_active_shape(database_url: str) -> None:
    async with api(database_url) as (_, client):
        first = await create(client)
        second = await create(client, {"id": "T-2", "items": ITEMS})
        await complete(client, first["id"])
        await move(client, "T-2", "CONFIRMED")

        response = await client.request("GET", "/orders/active")

        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"location", "epoch", "head", "digest", "orders"}
        assert body["location"] == "main"
        assert isinstance(body["epoch"], str)
        assert body["epoch"]
        assert body["head"] == 7
        assert [order["id"] for order in body["orders"]] == [second["id"]]
        assert body["orders"][0]["version"] == 2
        check_order(body["orders"][0])
        assert body["digest"] == fnv1a_digest([("T-2", 2)])


async def test_active_digest_many(database_url: str) -> None:
    async with api(database_url) as (_, client):
        for number in range(5):
            order = await create(client, {"id": f"D-{number}", "items": ITEMS})
            for _ in range(number):
                order = await move(client, order["id"], NEXT_STATE[order["state"]])

        body = (await client.request("GET", "/orders/active")).json()

        pairs = [(order["id"], order["version"]) for order in body["orders"]]
        assert sorted(pairs) == [(f"D-{n}", n + 1) for n in range(5)]
        assert body["digest"] == fnv1a_digest(pairs)


async def test_active_empty_location(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)

        body = (await client.request("GET", "/orders/active?location=patio")).json()

        assert body["location"] == "patio"
        assert body["head"] == 0
        assert body["orders"] == []
        assert body["digest"] == "0000000000000000"


async def test_active_per_location(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)
        patio = await create(client, {"location": "patio", "items": ITEMS})

        body = (await client.request("GET", "/orders/active?location=patio")).json()

        assert [order["id"] for order in body["orders"]] == [patio["id"]]
        assert body["head"] == 1


async def test_get_order(database_url: str) -> None:
    async with api(database_url) as (_, client):
        created = await create(client, {"id": "T-9", "items": ITEMS, "meta": {"table": 9}})

        response = await client.request("GET", "/orders/T-9")

        assert response.status == 200
        assert response.json() == created


async def test_get_order_missing(database_url: str) -> None:
    async with api(database_url) as (_, client):
        problem = check_problem(await client.request("GET", "/orders/nope"), 404, "not_found")

        assert "nope" in problem["detail"]


async def test_order_events(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS, "actor": "till-1"})
        await create(client, {"id": "T-2", "items": ITEMS})
        await move(client, "T-1", "CONFIRMED", actor="ana")
        await move(client, "T-1", "CANCELLED", reason="guest left")

        response = await client.request("GET", "/orders/T-1/events")

        assert response.status == 200
        body = response.json()
        assert set(body) == {"events"}
        events = body["events"]
        assert [event["seq"] for event in events] == [1, 3, 4]
        for event in events:
            assert set(event) == EVENT_FIELDS
            assert RFC3339_UTC.match(event["at"])
            check_order(event["order"])
        assert [event["kind"] for event in events] == [
            "order.created",
            "order.transitioned",
            "order.transitioned",
        ]
        assert [event["from"] for event in events] == [None, "PENDING", "CONFIRMED"]
        assert [event["to"] for event in events] == ["PENDING", "CONFIRMED", "CANCELLED"]
        assert [event["version"] for event in events] == [1, 2, 3]
        assert [event["actor"] for event in events] == ["till-1", "ana", None]
        assert events[2]["reason"] == "guest left"
        assert events[2]["order"]["state"] == "CANCELLED"


async def test_order_events_missing(database_url: str) -> None:
    async with api(database_url) as (_, client):
        check_problem(await client.request("GET", "/orders/nope/events"), 404, "not_found")


async def test_events_shape(database_url: str) -> None:
    async with api(database_url) as (_, client):
        for _ in range(3):
            await create(client)
        epoch = (await client.request("GET", "/orders/active")).json()["epoch"]

        response = await client.request("GET", "/events?since=0")

        assert response.status == 200
        body = response.json()
        assert set(body) == {"epoch", "head", "events"}
        assert body["epoch"] == epoch
        assert body["head"] == 3
        assert [event["seq"] for event in body["events"]] == [1, 2, 3]
        for event in body["events"]:
            assert set(event) == EVENT_FIELDS


async def test_events_since_limit(database_url: str) -> None:
    async with api(database_url) as (_, client):
        for _ in range(5):
            await create(client)

        body = (await client.request("GET", "/events?since=1&limit=2")).json()

        assert [event["seq"] for event in body["events"]] == [2, 3]
        assert body["head"] == 5


async def test_events_at_head(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)

        at_head = (await client.request("GET", "/events?since=1")).json()
        beyond = (await client.request("GET", "/events?since=9")).json()

        assert at_head["events"] == []
        assert beyond["events"] == []
        assert beyond["head"] == 1


async def test_events_with_epoch(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)
        epoch = (await client.request("GET", "/orders/active")).json()["epoch"]

        response = await client.request("GET", f"/events?since=0&epoch={epoch}")

        assert response.status == 200
        assert len(response.json()["events"]) == 1


async def test_events_per_location(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)
        await create(client)
        patio = await create(client, {"location": "patio", "items": ITEMS})

        body = (await client.request("GET", "/events?since=0&location=patio")).json()

        assert [event["seq"] for event in body["events"]] == [1]
        assert body["events"][0]["order_id"] == patio["id"]
        assert body["head"] == 1


async def test_events_wrong_epoch(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)

        response = await client.request("GET", "/events?since=0&epoch=0123456789abcdef")

        problem = check_problem(response, 410, "history_truncated")
        assert problem["epoch"] == "0123456789abcdef"


async def test_events_after_prune(database_url: str) -> None:
    async with api(database_url) as (server, client):
        done = await create(client)
        await complete(client, done["id"])
        await create(client)
        deleted = await server.engine.prune("main", older_than=timedelta(0))
        assert deleted == 5

        truncated = await client.request("GET", "/events?since=4")
        retained = await client.request("GET", "/events?since=5")

        problem = check_problem(truncated, 410, "history_truncated")
        assert problem["retained_after"] == 5
        assert [event["seq"] for event in retained.json()["events"]] == [6]


async def test_healthz(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)
        await create(client, {"location": "patio", "items": ITEMS})

        response = await client.request("GET", "/healthz")

        assert response.status == 200
        assert response.json() == {
            "status": "ok",
            "storage": "ok",
            "broker": "ok",
            "heads": {"main": 1, "patio": 1},
        }


# Writes.


async def test_create_generated_id(database_url: str) -> None:
    async with api(database_url) as (_, client):
        response = await client.request("POST", "/orders", {"items": ITEMS})

        assert response.status == 201
        order = response.json()
        check_order(order)
        assert order["state"] == "PENDING"
        assert order["version"] == 1
        assert order["location"] == "main"
        assert order["items"] == ITEMS
        assert order["meta"] == {}
        assert re.fullmatch(r"[0-9A-Z]{26}", order["id"])
        assert response.headers["location"] == f"/orders/{order['id']}"
        fetched = await client.request("GET", response.headers["location"])
        assert fetched.json() == order


async def test_create_client_id(database_url: str) -> None:
    async with api(database_url) as (_, client):
        body = {"id": "T-12", "location": "patio", "items": ITEMS, "meta": {"table": 12}}

        response = await client.request("POST", "/orders", body)

        assert response.status == 201
        order = response.json()
        assert order["id"] == "T-12"
        assert order["location"] == "patio"
        assert order["meta"] == {"table": 12}
        assert order["state"] == "PENDING"
        assert order["version"] == 1
        assert response.headers["location"] == "/orders/T-12"


async def test_transition_ok(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})

        response = await client.request(
            "POST",
            "/orders/T-1/transitions",
            {"to": "CONFIRMED", "expected_version": 1, "actor": "ana"},
        )

        assert response.status == 200
        order = response.json()
        check_order(order)
        assert order["state"] == "CONFIRMED"
        assert order["version"] == 2
        events = (await client.request("GET", "/orders/T-1/events")).json()["events"]
        assert events[-1]["actor"] == "ana"
        assert events[-1]["order"] == order


# Errors the state of an order causes.


async def test_version_conflict(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})
        await move(client, "T-1", "CONFIRMED")
        before = await log_state(client)

        response = await client.request(
            "POST", "/orders/T-1/transitions", {"to": "PREPARING", "expected_version": 1}
        )

        problem = check_problem(response, 409, "version_conflict")
        assert problem["expected_version"] == 1
        assert problem["actual_version"] == 2
        assert await log_state(client) == before


async def test_invalid_transition(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})
        before = await log_state(client)

        response = await client.request("POST", "/orders/T-1/transitions", {"to": "READY"})

        problem = check_problem(response, 409, "invalid_transition")
        assert problem["allowed"] == ["CANCELLED", "CONFIRMED", "REJECTED"]
        assert problem["state"] == "PENDING"
        assert problem["target"] == "READY"
        assert await log_state(client) == before


async def test_transition_terminal(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})
        await complete(client, "T-1")
        before = await log_state(client)

        response = await client.request("POST", "/orders/T-1/transitions", {"to": "READY"})

        problem = check_problem(response, 409, "invalid_transition")
        assert problem["allowed"] == []
        assert await log_state(client) == before


async def test_transition_missing(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client)
        before = await log_state(client)

        response = await client.request("POST", "/orders/nope/transitions", {"to": "CONFIRMED"})

        check_problem(response, 404, "not_found")
        assert await log_state(client) == before


async def test_id_conflict(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})
        before = await log_state(client)

        response = await client.request(
            "POST", "/orders", {"id": "T-1", "location": "patio", "items": ITEMS}
        )

        problem = check_problem(response, 409, "id_conflict")
        assert problem["order_id"] == "T-1"
        assert await log_state(client) == before


# Idempotency keys.


async def test_create_idempotent(database_url: str) -> None:
    async with api(database_url) as (_, client):
        key = {"Idempotency-Key": "till-1-0001"}
        first = await client.request("POST", "/orders", {"items": ITEMS}, headers=key)
        before = await log_state(client)

        again = await client.request("POST", "/orders", {"items": ITEMS}, headers=key)

        assert again.status == first.status
        assert again.json() == first.json()
        assert again.headers["location"] == first.headers["location"]
        assert await log_state(client) == before


async def test_create_key_reused(database_url: str) -> None:
    async with api(database_url) as (_, client):
        key = {"Idempotency-Key": "till-1-0001"}
        await client.request("POST", "/orders", {"items": ITEMS}, headers=key)
        before = await log_state(client)

        other = {"items": [{"name": "Diavola", "quantity": 1}]}
        response = await client.request("POST", "/orders", other, headers=key)

        check_problem(response, 409, "idempotency_key_reused")
        assert await log_state(client) == before


async def test_transition_idempotent(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})
        key = {"Idempotency-Key": "kds-7-0001"}
        body = {"to": "CONFIRMED", "expected_version": 1}
        first = await client.request("POST", "/orders/T-1/transitions", body, headers=key)
        # The order moves on; a retry of the first request still gets its result.
        await move(client, "T-1", "PREPARING")
        before = await log_state(client)

        again = await client.request("POST", "/orders/T-1/transitions", body, headers=key)

        assert first.status == 200
        assert again.status == 200
        assert again.json() == first.json()
        assert again.json()["version"] == 2
        assert await log_state(client) == before


async def test_transition_key_reused(database_url: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})
        key = {"Idempotency-Key": "kds-7-0001"}
        await client.request("POST", "/orders/T-1/transitions", {"to": "CONFIRMED"}, headers=key)
        before = await log_state(client)

        response = await client.request(
            "POST", "/orders/T-1/transitions", {"to": "PREPARING"}, headers=key
        )

        check_problem(response, 409, "idempotency_key_reused")
        assert await log_state(client) == before


# Authentication and roles.

TOKENS = {
    "kitchen-secret": TokenInfo("ana", frozenset({"kitchen"})),
    "manager-secret": TokenInfo("mia", frozenset({"manager"})),
}


def manager_cancels() -> dict[str, Any]:
    """Return the restaurant lifecycle in which only a manager may cancel."""
    definition = copy.deepcopy(RESTAURANT_LIFECYCLE)
    for rule in definition["transitions"]:
        if rule["to"] == "CANCELLED":
            rule["roles"] = ["manager"]
    return definition


@asynccontextmanager
async def secured(database_url: str) -> AsyncIterator[tuple[RunningServer, HttpClient]]:
    """Run a server that requires tokens, with a client that sends the kitchen token."""
    config = ServerConfig(tokens=TOKENS)
    async with (
        running_server(database_url, config=config, lifecycle=manager_cancels()) as server,
        HttpClient(server.url, token="kitchen-secret") as client,
    ):
        yield server, client


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-secret", "Basic a2l0Y2hlbjpzZWNyZXQ=", "Bearer "],
    ids=["none", "wrong", "basic", "empty"],
)
async def test_unauthorized(database_url: str, authorization: str | None) -> None:
    async with secured(database_url) as (server, client):
        await create(client)
        before = await log_state(client)
        headers = [("Authorization", authorization)] if authorization else []

        response = await raw_request(
            server.port,
            http_request("POST", "/orders", json.dumps({"items": ITEMS}).encode(), headers),
        )

        assert response.status == 401
        assert response.headers["content-type"] == PROBLEM_TYPE
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert await log_state(client) == before


async def test_unauthorized_read(database_url: str) -> None:
    async with secured(database_url) as (server, _), HttpClient(server.url) as anonymous:
        response = await anonymous.request("GET", "/orders/active")

        check_problem(response, 401, "unauthorized")


async def test_healthz_public(database_url: str) -> None:
    async with secured(database_url) as (server, _), HttpClient(server.url) as anonymous:
        response = await anonymous.request("GET", "/healthz")

        assert response.status == 200


async def test_token_actor(database_url: str) -> None:
    async with secured(database_url) as (_, client):
        order = await create(client, {"items": ITEMS, "actor": "someone-else"})

        await move(client, order["id"], "CONFIRMED", actor="someone-else")

        events = (await client.request("GET", f"/orders/{order['id']}/events")).json()["events"]
        assert [event["actor"] for event in events] == ["ana", "ana"]


async def test_forbidden(database_url: str) -> None:
    async with secured(database_url) as (_, client):
        order = await create(client)
        before = await log_state(client)

        response = await client.request(
            "POST", f"/orders/{order['id']}/transitions", {"to": "CANCELLED", "reason": "oops"}
        )

        problem = check_problem(response, 403, "forbidden")
        assert problem["required_roles"] == ["manager"]
        assert await log_state(client) == before


async def test_role_allowed(database_url: str) -> None:
    async with secured(database_url) as (server, client):
        order = await create(client)

        async with HttpClient(server.url, token="manager-secret") as manager:
            response = await manager.request(
                "POST",
                f"/orders/{order['id']}/transitions",
                {"to": "CANCELLED", "reason": "guest left"},
            )

        assert response.status == 200
        assert response.json()["state"] == "CANCELLED"


# Bad input: each request gets its own clear error and changes nothing. A
# case without a field is malformed JSON (400 invalid_json); a case with a
# field is valid JSON with a wrong value (422 invalid_request naming it).

DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def item(**fields: Any) -> bytes:
    return body({"items": [{"name": "Margherita", "quantity": 1, **fields}]})


def with_items(**fields: Any) -> bytes:
    return body({"items": ITEMS, **fields})


def expecting(version: Any) -> bytes:
    return body({"to": "CONFIRMED", "expected_version": version})


# (case, body of POST /orders, field)
BAD_CREATES: list[tuple[str, bytes, str | None]] = [
    ("malformed", b'{"items": [', None),
    ("empty", b"", None),
    ("nan", b'{"items": [{"name": "x", "quantity": NaN}]}', None),
    ("infinity", b'{"items": [], "meta": {"x": Infinity}}', None),
    ("not-utf8", b'{"items": [{"name": "caf\xe9", "quantity": 1}]}', None),
    ("deep", DEEP_JSON, None),
    ("array", b"[]", "body"),
    ("string", b'"items"', "body"),
    ("null", b"null", "body"),
    ("number", b"42", "body"),
    ("no-items", b"{}", "items"),
    ("items-empty", body({"items": []}), "items"),
    ("items-string", body({"items": "pizza"}), "items"),
    ("items-object", body({"items": {"name": "x"}}), "items"),
    ("item-number", body({"items": [1]}), "items.0"),
    ("unknown-field", with_items(colour="red"), "colour"),
    ("unknown-item-field", item(price=9), "items.0.price"),
    ("name-number", body({"items": [{"name": 5, "quantity": 1}]}), "items.0.name"),
    ("name-missing", body({"items": [{"quantity": 1}]}), "items.0.name"),
    ("quantity-negative", item(quantity=-1), "items.0.quantity"),
    ("quantity-zero", item(quantity=0), "items.0.quantity"),
    ("quantity-float", item(quantity=1.5), "items.0.quantity"),
    ("quantity-whole-float", item(quantity=2.0), "items.0.quantity"),
    ("quantity-bool", item(quantity=True), "items.0.quantity"),
    ("quantity-string", item(quantity="2"), "items.0.quantity"),
    ("quantity-overflow", b'{"items": [{"name": "x", "quantity": 1e400}]}', "items.0.quantity"),
    ("quantity-too-many", item(quantity=10_001), "items.0.quantity"),
    ("meta-list", with_items(meta=[1]), "meta"),
    ("meta-string", with_items(meta="table 4"), "meta"),
    ("id-number", with_items(id=7), "id"),
    ("id-space", with_items(id="T 1"), "id"),
    ("id-slash", with_items(id="T/1"), "id"),
    ("id-too-long", with_items(id="T" * 65), "id"),
    ("location-dots", with_items(location="../x"), "location"),
    ("location-empty", with_items(location=""), "location"),
    ("actor-number", with_items(actor=3), "actor"),
]

# (case, order id in the path, body of POST /orders/{id}/transitions, field)
BAD_TRANSITIONS: list[tuple[str, str, bytes, str | None]] = [
    ("malformed", "T-1", b"{to: READY}", None),
    ("array", "T-1", b'["CONFIRMED"]', "body"),
    ("no-to", "T-1", b"{}", "to"),
    ("unknown-state", "T-1", body({"to": "COOKED"}), "to"),
    ("lowercase-state", "T-1", body({"to": "confirmed"}), "to"),
    ("to-number", "T-1", body({"to": 2}), "to"),
    ("unknown-field", "T-1", body({"to": "CONFIRMED", "when": 1}), "when"),
    ("version-zero", "T-1", expecting(0), "expected_version"),
    ("version-negative", "T-1", expecting(-1), "expected_version"),
    ("version-float", "T-1", expecting(1.0), "expected_version"),
    ("version-bool", "T-1", expecting(True), "expected_version"),
    ("version-string", "T-1", expecting("1"), "expected_version"),
    ("reason-number", "T-1", body({"to": "CANCELLED", "reason": 5}), "reason"),
    ("reason-missing", "T-1", body({"to": "CANCELLED"}), "reason"),
    ("reason-blank", "T-1", body({"to": "CANCELLED", "reason": "  "}), "reason"),
    ("bad-order-id", "T%201", body({"to": "CONFIRMED"}), "order_id"),
]

# (case, target of a GET, field)
BAD_QUERIES: list[tuple[str, str, str]] = [
    ("order-id-space", "/orders/T%201", "order_id"),
    ("history-id-dash", "/orders/-T/events", "order_id"),
    ("active-location-slash", "/orders/active?location=a%2Fb", "location"),
    ("active-location-empty", "/orders/active?location=", "location"),
    ("no-since", "/events", "since"),
    ("since-empty", "/events?since=", "since"),
    ("since-negative", "/events?since=-1", "since"),
    ("since-word", "/events?since=abc", "since"),
    ("since-float", "/events?since=1.5", "since"),
    ("since-plus", "/events?since=%2B1", "since"),
    ("since-superscript", "/events?since=%C2%B2", "since"),
    ("since-arabic-digit", "/events?since=%D9%A3", "since"),
    ("since-huge", "/events?since=" + "9" * 30, "since"),
    ("limit-zero", "/events?since=0&limit=0", "limit"),
    ("limit-too-large", "/events?since=0&limit=10001", "limit"),
    ("limit-word", "/events?since=0&limit=all", "limit"),
    ("location-dots", "/events?since=0&location=..", "location"),
]


async def check_rejected(
    client: HttpClient,
    method: str,
    target: str,
    payload: bytes | None,
    field: str | None,
    headers: dict[str, str] | None = None,
) -> None:
    """Send a bad request; check its problem document and that nothing changed."""
    before = await log_state(client)

    response = await client.request(method, target, raw_body=payload, headers=headers)

    if field is None:
        problem = check_problem(response, 400, "invalid_json")
        assert "field" not in problem
    else:
        problem = check_problem(response, 422, "invalid_request")
        assert problem["field"] == field
    assert await log_state(client) == before


@pytest.mark.parametrize(
    ("payload", "field"), [case[1:] for case in BAD_CREATES], ids=[c[0] for c in BAD_CREATES]
)
async def test_create_bad_input(database_url: str, payload: bytes, field: str | None) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})

        await check_rejected(client, "POST", "/orders", payload, field)


@pytest.mark.parametrize(
    ("order_id", "payload", "field"),
    [case[1:] for case in BAD_TRANSITIONS],
    ids=[case[0] for case in BAD_TRANSITIONS],
)
async def test_transition_bad_input(
    database_url: str, order_id: str, payload: bytes, field: str | None
) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})

        await check_rejected(client, "POST", f"/orders/{order_id}/transitions", payload, field)


@pytest.mark.parametrize(
    ("target", "field"), [case[1:] for case in BAD_QUERIES], ids=[c[0] for c in BAD_QUERIES]
)
async def test_query_bad_input(database_url: str, target: str, field: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})

        await check_rejected(client, "GET", target, None, field)


@pytest.mark.parametrize(
    ("method", "target", "payload"),
    [
        ("POST", "/orders", body({"items": ITEMS})),
        ("POST", "/orders/T-1/transitions", body({"to": "CONFIRMED"})),
    ],
    ids=["create", "transition"],
)
@pytest.mark.parametrize("key", ["has space", "k" * 201, "tab\there"], ids=["space", "long", "tab"])
async def test_bad_idempotency_key(
    database_url: str, method: str, target: str, payload: bytes, key: str
) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})

        await check_rejected(
            client, method, target, payload, "Idempotency-Key", {"Idempotency-Key": key}
        )


async def test_body_too_large(database_url: str) -> None:
    async with api(database_url) as (server, client):
        await create(client)
        before = await log_state(client)
        head = http_request("POST", "/orders", None, [("Content-Length", str(10 * 1024 * 1024))])

        async with raw_connection(server.port) as connection:
            # Only the head and 64 KiB of the 10 MiB body are sent: the
            # server must answer from the Content-Length alone, and close.
            await connection.send(head + b"x" * 65536)
            response = await connection.read_response()
            await connection.wait_closed()

        assert response.status == 413
        assert response.headers["content-type"] == PROBLEM_TYPE
        problem = response.json()
        assert problem["code"] == "payload_too_large"
        assert problem["limit"] == 1024 * 1024
        assert response.headers["connection"] == "close"
        assert await log_state(client) == before


async def test_unknown_paths(database_url: str) -> None:
    async with api(database_url) as (_, client):
        for path in ("/nope", "/orders/", "/orders/T-1/items", "/orders/a/b/events", "/ws/x"):
            response = await client.request("GET", path)

            assert response.status == 404, path
            check_problem(response, 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/orders/active", "GET"),
        ("POST", "/orders/active", "GET"),
        ("GET", "/orders", "POST"),
        ("PUT", "/orders", "POST"),
        ("DELETE", "/orders/T-1", "GET, PATCH"),
        ("GET", "/orders/T-1/transitions", "POST"),
        ("POST", "/orders/T-1/events", "GET"),
        ("POST", "/events", "GET"),
        ("POST", "/healthz", "GET"),
    ],
)
async def test_wrong_method(database_url: str, method: str, path: str, allowed: str) -> None:
    async with api(database_url) as (_, client):
        await create(client, {"id": "T-1", "items": ITEMS})
        before = await log_state(client)

        response = await client.request(method, path, raw_body=b"{}")

        check_problem(response, 405, "invalid_request")
        assert response.headers["allow"] == allowed
        assert await log_state(client) == before


# Failures inside the server.


async def test_storage_unavailable(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A database outage cannot be caused on the shared test servers, so the
    # engine call fails the way storage adapters report one.
    async with api(database_url) as (server, client):

        async def unreachable(order_id: str) -> Any:
            raise StorageUnavailable("connection refused by 127.0.0.1:5432")

        monkeypatch.setattr(server.engine, "get", unreachable)

        response = await client.request("GET", "/orders/T-1")

        check_problem(response, 503, "storage_unavailable")


async def test_healthz_storage_down(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with api(database_url) as (server, client):

        async def down() -> Health:
            return Health(False, "connection refused", BrokerHealth(True, "ok"))

        monkeypatch.setattr(server.engine, "health", down)

        response = await client.request("GET", "/healthz")

        assert response.status == 503
        assert response.json()["status"] == "down"
        assert response.json()["storage"] == "connection refused"


async def test_unexpected_error(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug in a handler (here a patched engine call) must cost that request
    # a 500, not stop the server.
    async with api(database_url) as (server, client):

        async def broken(order_id: str) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(server.engine, "get", broken)

        response = await client.request("GET", "/orders/T-1")

        check_problem(response, 500, "internal_error")
        async with HttpClient(server.url) as fresh:
            assert (await fresh.request("GET", "/healthz")).status == 200


# Location allowlist.


async def test_locations_allowlist_rejects_others(database_url: str) -> None:
    config = ServerConfig(locations=frozenset({"main", "terrace"}))
    async with api(database_url, config=config) as (_server, client):
        served = await client.request("GET", "/orders/active?location=terrace")
        unknown = await client.request("GET", "/orders/active?location=typo")
        events = await client.request("GET", "/events?since=0&location=typo")
        created = await client.request("POST", "/orders", {"items": ITEMS, "location": "typo"})
        heads = (await client.health())["heads"]
    assert served.status == 200
    problem = check_problem(unknown, 404, "not_found")
    assert "terrace" in problem["detail"]
    check_problem(events, 404, "not_found")
    check_problem(created, 404, "not_found")
    assert "typo" not in heads


def test_locations_allowlist_validates_names() -> None:
    from orderflow.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        ServerConfig(locations=frozenset({"main", "bad/name"}))
