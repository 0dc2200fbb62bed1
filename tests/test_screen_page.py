"""The kitchen screen page: served by a real server, in two languages, and
with a JavaScript client rule that agrees with the Python client.

The JavaScript tests run orderflow/static/screen.js under Node.js (``node`` on
the PATH) through small harness scripts written to ``tmp_path``. Vectors come
from Python: ``orderflow.digest`` for digests, ``orderflow.client.Mirror``
fed with events that a real engine committed, and ``Screen`` for feed URLs.
They are skipped, with the reason, when ``node`` is missing. No browser is
needed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import anyio.abc
import pytest

from orderflow import Engine
from orderflow.client import HttpClient, Mirror, Screen
from orderflow.digest import digest_of, fnv1a_64
from orderflow.lifecycle import DEFAULT_LIFECYCLE
from orderflow.server import ServerConfig, TokenInfo
from tests.server_support import running_server

STATIC = resources.files("orderflow").joinpath("static")
PAGE_BYTES = STATIC.joinpath("screen.html").read_bytes()
SCRIPT_BYTES = STATIC.joinpath("screen.js").read_bytes()
PAGE = PAGE_BYTES.decode()
SCRIPT = SCRIPT_BYTES.decode()
NODE = shutil.which("node")
TERMINAL = sorted(DEFAULT_LIFECYCLE.terminal)
ITEMS = [{"name": "Margherita", "quantity": 2, "station": "horno", "notes": "sin albahaca"}]
STATUSES = ("connecting", "connected", "reconnecting", "offline")
requires_node = pytest.mark.skipif(
    NODE is None,
    reason="node (Node.js 20 or later) is not on the PATH; the JavaScript screen tests need it",
)


# Reading the page and the script.


def strings_table() -> dict[str, dict[str, str]]:
    """Parse the JSON string table between the markers in screen.js."""
    match = re.search(r"/\* strings-begin \*/(.*?)/\* strings-end \*/", SCRIPT, re.DOTALL)
    assert match is not None, "screen.js has no /* strings-begin */ ... /* strings-end */ block"
    table: dict[str, dict[str, str]] = json.loads(match.group(1))
    return table


class _References(HTMLParser):
    """Collects the URLs an HTML document loads or links to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.i18n_keys: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "poster", "srcset") and value is not None:
                self.urls.append(value)
            if name == "data-i18n" and value is not None:
                self.i18n_keys.append(value)


def page_references() -> _References:
    parser = _References()
    parser.feed(PAGE)
    parser.close()
    return parser


# Running JavaScript under Node.js.

# Runs the tasks named in the input file and prints their results as JSON.
# The "clients" task drives FeedClient with a fake WebSocket and a manual
# clock, so reconnect timing is exact.
HARNESS = r"""
"use strict";
const fs = require("fs");
const screen = require(process.argv[2]);
const input = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));

function mirrorState(mirror) {
  const states = {};
  for (const [id, order] of mirror.orders) {
    states[id] = [order.state, order.version];
  }
  return {last: mirror.last, epoch: mirror.epoch, digest: mirror.digest, states: states};
}

class ManualClock {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    this.timers = new Map();
  }
  set(callback, ms) {
    const id = this.nextId++;
    this.timers.set(id, {at: this.now + ms, callback: callback});
    return id;
  }
  clear(id) {
    this.timers.delete(id);
  }
  advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let due = null;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (due === null || timer.at < due[1].at)) {
          due = [id, timer];
        }
      }
      if (due === null) {
        break;
      }
      this.timers.delete(due[0]);
      this.now = due[1].at;
      due[1].callback();
    }
    this.now = end;
  }
}

function runScenario(scenario) {
  const clock = new ManualClock();
  const sockets = [];
  class FakeSocket {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.openedAt = clock.now;
      this.closeCode = null;
      sockets.push(this);
      if (scenario.refuse) {
        clock.set(() => { if (this.onclose) this.onclose({code: 1006}); }, 0);
      }
    }
    close(code) {
      this.closeCode = code;
    }
  }
  let changes = 0;
  const client = new screen.FeedClient(Object.assign({
    pageHref: "http://127.0.0.1:8080/screen?lang=es",
    location: "main",
    terminal: scenario.terminal,
    WebSocketImpl: FakeSocket,
    onChange: () => { changes += 1; },
    setTimer: (callback, ms) => clock.set(callback, ms),
    clearTimer: (id) => clock.clear(id),
    now: () => clock.now,
    random: () => scenario.random,
  }, scenario.options || {}));
  client.start();
  const records = [];
  for (const step of scenario.steps) {
    const socket = sockets[sockets.length - 1];
    if ("message" in step) {
      if (socket.onmessage) socket.onmessage({data: JSON.stringify(step.message)});
    } else if ("text" in step) {
      if (socket.onmessage) socket.onmessage({data: step.text});
    } else if ("close" in step) {
      if (socket.onclose) socket.onclose({code: step.close});
    } else if ("advance" in step) {
      clock.advance(step.advance);
    }
    records.push(Object.assign(mirrorState(client.mirror), {
      time: clock.now,
      status: client.status,
      outcome: client.lastOutcome,
      changes: changes,
      reasons: client.reconnectReasons.slice(),
      sockets: sockets.map((s) => ({url: s.url, protocols: s.protocols, at: s.openedAt, closed: s.closeCode !== null})),
    }));
  }
  client.stop();
  return records;
}

const tasks = {
  strings: () => screen.STRINGS,
  digests: (cases) => cases.map((pairs) => ({
    digest: screen.digestOf(pairs),
    hashes: pairs.map(([id, version]) => screen.contribution(id, version).toString()),
  })),
  mirrors: (cases) => cases.map((item) => {
    const mirror = new screen.Mirror(item.terminal);
    mirror.loadSnapshot(item.snapshot);
    const outcomes = item.deliveries.map((event) => mirror.apply(event));
    return Object.assign(mirrorState(mirror), {outcomes: outcomes});
  }),
  decisions: (cases) => cases.map(([seq, last]) => screen.decideEvent(seq, last)),
  heartbeats: (cases) => cases.map((item) => screen.heartbeatAction(item.head, item.digest, item.last, item.own)),
  urls: (cases) => cases.map((item) => screen.feedUrl(item.page, item)),
  backoff: (cases) => cases.map(([failures, random]) => screen.backoffDelay(failures, () => random, 250, 5000)),
  languages: (cases) => cases.map(([requested, browser]) => screen.pickLanguage(requested, browser)),
  ages: (cases) => cases.map(([ms, language]) => screen.formatAge(ms, language)),
  labels: (item) => item.names.map((name) => screen.lifecycleLabel(item.lifecycle, item.language, name)),
  transitions: (item) => Object.fromEntries(item.lifecycle.states.map((state) => [
    state, screen.transitionsFrom(item.lifecycle, state).map((rule) => rule.to),
  ])),
  errors: (cases) => cases.map((result) => screen.errorMessageKey(result)),
  keys: (count) => {
    const keys = [screen.newIdempotencyKey(globalThis.crypto)];
    for (let index = 1; index < count; index += 1) {
      keys.push(screen.newIdempotencyKey({getRandomValues: (bytes) => globalThis.crypto.getRandomValues(bytes)}));
    }
    keys.push(screen.newIdempotencyKey(undefined));
    return keys;
  },
  clients: (scenarios) => scenarios.map(runScenario),
};

const output = {};
for (const [name, value] of Object.entries(input)) {
  output[name] = tasks[name](value);
}
process.stdout.write(JSON.stringify(output));
"""


def install_script(folder: Path) -> Path:
    """Copy the packaged screen.js to ``folder`` as CommonJS, whatever package.json is near."""
    script = folder / "screen.cjs"
    script.write_bytes(SCRIPT_BYTES)
    return script


def run_node(folder: Path, tasks: dict[str, Any]) -> dict[str, Any]:
    """Run the named harness tasks on screen.js under Node.js and return their results."""
    assert NODE is not None
    harness = folder / "harness.cjs"
    harness.write_text(HARNESS, encoding="utf-8")
    data = folder / "input.json"
    data.write_text(json.dumps(tasks), encoding="utf-8")
    completed = subprocess.run(
        [NODE, str(harness), str(install_script(folder)), str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


# Events committed by a real engine, as the WebSocket feed sends them.


@dataclass(frozen=True)
class EventLog:
    """Events a real engine committed, and its snapshot after the last one."""

    epoch: str
    events: list[dict[str, Any]]
    digest: str
    active: list[str]


def record_events(path: Path, rng: random.Random, count: int) -> EventLog:
    """Drive a SQLite engine with random orders and moves, and return its log."""
    with Engine.open(f"sqlite:///{path}") as engine:
        active: list[str] = []
        while engine.position().head < count:
            if not active or rng.random() < 0.3:
                meta = {"table": rng.randint(1, 20)}
                order = engine.create(ITEMS, meta=meta)
                active.append(order.id)
                continue
            order = engine.get(rng.choice(active))
            target = rng.choice(DEFAULT_LIFECYCLE.allowed_targets(order.state))
            rule = DEFAULT_LIFECYCLE.rule(order.state, target)
            reason = "se acabó la masa" if rule is not None and rule.reason_required else None
            engine.transition(order.id, target, expected_version=order.version, reason=reason)
            if DEFAULT_LIFECYCLE.is_terminal(target):
                active.remove(order.id)
        page = engine.events_since(0, limit=count)
        snapshot = engine.snapshot()
        return EventLog(
            epoch=page.epoch,
            events=[{"type": "event", **event.to_dict()} for event in page.events],
            digest=snapshot.digest,
            active=[order.id for order in snapshot.orders],
        )


@pytest.fixture(scope="module")
def event_log(tmp_path_factory: pytest.TempPathFactory) -> EventLog:
    folder = tmp_path_factory.mktemp("event-log")
    return record_events(folder / "orderflow.db", random.Random(20240611), 80)


def snapshot_at(epoch: str, events: list[dict[str, Any]], head: int) -> dict[str, Any]:
    """Build the snapshot message at ``head`` by applying events 1..head to a Python mirror."""
    mirror = Mirror(TERMINAL)
    mirror.load_snapshot({"epoch": epoch, "head": 0, "orders": []})
    for event in events[:head]:
        mirror.apply(event)
    return {
        "type": "snapshot",
        "epoch": epoch,
        "head": head,
        "digest": mirror.digest,
        "orders": list(mirror.orders.values()),
    }


def noisy_delivery(
    events: list[dict[str, Any]], start: int, rng: random.Random
) -> list[dict[str, Any]]:
    """Deliver events after seq ``start`` in order, mixed with old events and jumps ahead."""
    delivered: list[dict[str, Any]] = []
    position = start
    while position < len(events):
        roll = rng.random()
        if roll < 0.15 and position > 0:
            delivered.append(events[rng.randrange(0, position)])
        elif roll < 0.3 and position + 1 < len(events):
            delivered.append(events[rng.randrange(position + 1, len(events))])
        else:
            delivered.append(events[position])
            position += 1
    return delivered


def python_outcomes(
    snapshot: dict[str, Any], deliveries: list[dict[str, Any]]
) -> tuple[Mirror, list[str]]:
    mirror = Mirror(TERMINAL)
    mirror.load_snapshot(snapshot)
    outcomes = []
    for event in deliveries:
        try:
            outcomes.append("apply" if mirror.apply(event) else "duplicate")
        except ValueError:
            outcomes.append("gap")
    return mirror, outcomes


def ticket(order_id: str, state: str, version: int) -> dict[str, Any]:
    return {
        "id": order_id,
        "location": "main",
        "state": state,
        "version": version,
        "items": ITEMS,
        "meta": {"table": 7},
        "created_at": "2024-06-11T12:00:00Z",
        "updated_at": "2024-06-11T12:00:00Z",
    }


def snapshot_message(head: int, orders: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "epoch": "epoch-1",
        "head": head,
        "digest": digest_of((order["id"], order["version"]) for order in orders),
        "orders": orders,
    }


def event_message(seq: int, order: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "seq": seq, "kind": "order.transitioned", "order": order}


def query_of(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


# The page and the script over a real server.


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/screen"])
async def test_page_served_as_html(database_url: str, path: str) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as client:
        response = await client.request("GET", path)

    assert response.status == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.body == PAGE_BYTES


@pytest.mark.anyio
async def test_script_served_as_javascript(database_url: str) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as client:
        response = await client.request("GET", "/static/screen.js")

    assert response.status == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.body == SCRIPT_BYTES


@pytest.mark.anyio
async def test_script_needs_no_token(database_url: str) -> None:
    config = ServerConfig(tokens={"kitchen-token": TokenInfo(actor="pass")})
    async with (
        running_server(database_url, config=config) as server,
        HttpClient(server.url) as client,
    ):
        page = await client.request("GET", "/screen")
        script = await client.request("GET", "/static/screen.js")
        orders = await client.request("GET", "/orders/active")

    assert page.status == 200
    assert script.status == 200
    assert orders.status == 401


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/", "/screen"])
async def test_page_resources_same_origin(database_url: str, path: str) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as client:
        page_url = server.url + path
        for reference in page_references().urls:
            resolved = urljoin(page_url, reference)
            assert urlsplit(resolved).netloc == urlsplit(server.url).netloc, reference
            response = await client.request("GET", urlsplit(resolved).path)
            assert response.status == 200, resolved


def test_page_loads_script() -> None:
    assert "static/screen.js" in page_references().urls


@pytest.mark.parametrize(("name", "text"), [("screen.html", PAGE), ("screen.js", SCRIPT)])
def test_no_external_urls(name: str, text: str) -> None:
    assert re.findall(r"(?i)\b(?:https?|wss?|ftp)://", text) == []
    assert re.findall(r"""(?i)(?:src|href|action)\s*=\s*["']?//""", text) == []


def test_page_css_loads_nothing() -> None:
    assert re.findall(r"@import|\burl\(", PAGE) == []


def test_html_inserts_no_data() -> None:
    # Text from orders reaches the page only through textContent.
    assert re.findall(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", SCRIPT) == []


# Both languages.


def test_strings_have_both_languages() -> None:
    for key, entry in strings_table().items():
        assert set(entry) == {"en", "es"}, key
        assert entry["en"].strip(), key
        assert entry["es"].strip(), key


def test_strings_keep_placeholders() -> None:
    for key, entry in strings_table().items():
        english = sorted(re.findall(r"\{(\w+)\}", entry["en"]))
        spanish = sorted(re.findall(r"\{(\w+)\}", entry["es"]))
        assert english == spanish, key


def test_strings_used_exist() -> None:
    table = strings_table()
    literal = re.findall(
        r"""\b(?:t|showNotice)\(\s*"(\w+)"\s*[,)]|translate\([^,()]+,\s*"(\w+)"\s*[,)]""", SCRIPT
    )
    used = {first or second for first, second in literal}
    used |= set(page_references().i18n_keys)
    used |= {f"status_{status}" for status in STATUSES}
    assert used, "no string keys found in screen.js and screen.html"
    assert sorted(used - set(table)) == []


def test_strings_all_used() -> None:
    # Keys built at run time: "status_" + status and "error_" + code.
    dynamic = re.compile(r"(status|error)_\w+\Z")
    unused = [
        key
        for key in strings_table()
        if not dynamic.match(key) and f'"{key}"' not in SCRIPT and f'"{key}"' not in PAGE
    ]
    assert unused == []


def test_default_labels_cover_lifecycle() -> None:
    names = [rule.name for rule in DEFAULT_LIFECYCLE.rules if rule.name]
    for language in ("es", "en"):
        labels = DEFAULT_LIFECYCLE.labels[language]
        for name in [*DEFAULT_LIFECYCLE.states, *names]:
            assert labels.get(name, "").strip(), f"{language}: {name}"


@pytest.mark.anyio
async def test_served_lifecycle_has_labels(database_url: str) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as client:
        lifecycle = (await client.request("GET", "/lifecycle")).json()

    names = [rule["name"] for rule in lifecycle["transitions"] if "name" in rule]
    for language in ("es", "en"):
        labels = lifecycle["labels"][language]
        for name in [*lifecycle["states"], *names]:
            assert labels.get(name, "").strip(), f"{language}: {name}"


# The JavaScript functions under Node.js, against Python.


@requires_node
def test_node_strings_match_table(tmp_path: Path) -> None:
    result = run_node(tmp_path, {"strings": None})

    assert result["strings"] == strings_table()


@requires_node
def test_node_digest_matches_python(tmp_path: Path) -> None:
    rng = random.Random(7)
    cases: list[list[tuple[str, int]]] = [
        [],
        [("a", 1)],
        [("A-1", 1), ("A-1", 2)],
        [("pedido-ñ", 3), ("注文", 12), ("🍕🍕", 2**53 - 1)],
    ]
    alphabet = "abcXYZ019._:-ñé"
    for _ in range(40):
        count = rng.randint(1, 30)
        cases.append(
            [
                ("".join(rng.choices(alphabet, k=rng.randint(1, 64))), rng.randint(1, 10**6))
                for _ in range(count)
            ]
        )

    result = run_node(tmp_path, {"digests": cases})

    for pairs, computed in zip(cases, result["digests"], strict=True):
        assert computed["digest"] == digest_of(pairs), pairs
        expected = [str(fnv1a_64(f"{order_id}\n{version}".encode())) for order_id, version in pairs]
        assert computed["hashes"] == expected, pairs


@requires_node
def test_node_mirror_matches_python(tmp_path: Path, event_log: EventLog) -> None:
    epoch, events = event_log.epoch, event_log.events
    rng = random.Random(11)
    cases: list[dict[str, Any]] = []
    for _ in range(30):
        snapshot = snapshot_at(epoch, events, rng.randint(0, len(events) // 2))
        deliveries = noisy_delivery(events, snapshot["head"], rng)
        cases.append({"terminal": TERMINAL, "snapshot": snapshot, "deliveries": deliveries})

    result = run_node(tmp_path, {"mirrors": cases})

    for case, computed in zip(cases, result["mirrors"], strict=True):
        mirror, outcomes = python_outcomes(case["snapshot"], case["deliveries"])
        assert computed["outcomes"] == outcomes
        assert computed["last"] == mirror.last
        assert computed["digest"] == mirror.digest
        assert computed["states"] == {key: list(value) for key, value in mirror.states().items()}


@requires_node
def test_node_mirror_reaches_engine_state(tmp_path: Path, event_log: EventLog) -> None:
    events = event_log.events
    case = {
        "terminal": TERMINAL,
        "snapshot": snapshot_at(event_log.epoch, events, 0),
        "deliveries": events,
    }

    result = run_node(tmp_path, {"mirrors": [case]})

    computed = result["mirrors"][0]
    assert computed["last"] == len(events)
    assert computed["digest"] == event_log.digest
    assert sorted(computed["states"]) == sorted(event_log.active)


@requires_node
def test_node_event_decisions(tmp_path: Path) -> None:
    cases = [[1, 0], [5, 4], [4, 4], [3, 4], [0, 4], [6, 4], [100, 4], [1.5, 0], [None, 0]]

    result = run_node(tmp_path, {"decisions": cases})

    expected = [
        "apply",
        "apply",
        "duplicate",
        "duplicate",
        "duplicate",
        "gap",
        "gap",
        "invalid",
        "invalid",
    ]
    assert result["decisions"] == expected


@requires_node
def test_node_heartbeat_matches_rule(tmp_path: Path, event_log: EventLog) -> None:
    epoch, events = event_log.epoch, event_log.events
    snapshot = snapshot_at(epoch, events, 40)
    mirror = Mirror(TERMINAL)
    mirror.load_snapshot(snapshot)
    other = snapshot_at(epoch, events, 39)["digest"]
    assert other != mirror.digest
    cases = []
    expected = []
    for head in (mirror.last - 1, mirror.last, mirror.last + 1, mirror.last + 50):
        for digest in (mirror.digest, other):
            cases.append(
                {"head": head, "digest": digest, "last": mirror.last, "own": mirror.digest}
            )
            # The rule of orderflow.client.Screen: wait for events up to a
            # higher head; take a snapshot when the digest at our head differs.
            if head > mirror.last:
                expected.append("wait")
            elif head == mirror.last and digest != mirror.digest:
                expected.append("snapshot")
            else:
                expected.append("none")

    result = run_node(tmp_path, {"heartbeats": cases})

    assert result["heartbeats"] == expected


@requires_node
@pytest.mark.anyio
async def test_node_feed_url_matches_python(tmp_path: Path) -> None:
    cases = []
    expected = []
    for location in ("main", "bar-2"):
        for token in (None, "token with spaces&=?"):
            for epoch, last, snapshot in (
                (None, 0, False),
                ("ep-1", 42, False),
                ("ep-1", 42, True),
            ):
                screen = Screen("http://127.0.0.1:8080", location=location, token=token)
                screen.mirror.epoch = epoch
                screen.mirror.last = last
                # The URL builder of the Python client reads this private flag.
                screen._force_snapshot = snapshot
                expected.append(screen._ws_url())
                cases.append(
                    {
                        "page": "http://127.0.0.1:8080/screen?lang=es&location=" + location,
                        "location": location,
                        "token": token,
                        "epoch": epoch,
                        "last": last,
                        "snapshot": snapshot,
                    }
                )

    result = await anyio.to_thread.run_sync(run_node, tmp_path, {"urls": cases})

    for python_url, node_url in zip(expected, result["urls"], strict=True):
        python_parts = urlsplit(python_url)
        node_parts = urlsplit(node_url)
        assert node_parts.scheme == python_parts.scheme
        assert node_parts.netloc == python_parts.netloc
        assert node_parts.path == python_parts.path
        assert query_of(node_url) == query_of(python_url)


@requires_node
def test_node_feed_url_secure(tmp_path: Path) -> None:
    case = {"page": "https://kitchen.example/screen", "location": "main", "epoch": None}

    result = run_node(tmp_path, {"urls": [case]})

    assert result["urls"] == ["wss://kitchen.example/ws?location=main"]


@requires_node
def test_node_backoff_capped(tmp_path: Path) -> None:
    cases = [[failures, random_value] for failures in range(0, 12) for random_value in (0, 0.5, 1)]

    result = run_node(tmp_path, {"backoff": cases})

    for (failures, random_value), delay in zip(cases, result["backoff"], strict=True):
        ceiling = 0 if failures == 0 else min(5000, 250 * 2 ** (failures - 1))
        assert delay == pytest.approx(ceiling * (0.5 + 0.5 * random_value)), failures


@requires_node
def test_node_language_choice(tmp_path: Path) -> None:
    cases = [
        ["es", "en-US"],
        ["en", "es-ES"],
        ["ES", None],
        ["es-MX", None],
        [None, "es-419"],
        [None, "es"],
        ["", "es-AR"],
        ["fr", "es-CO"],
        [None, "en-GB"],
        [None, "fr-FR"],
        [None, None],
    ]

    result = run_node(tmp_path, {"languages": cases})

    assert result["languages"] == ["es", "en", "es", "es", "es", "es", "es", "es", "en", "en", "en"]


@requires_node
def test_node_age_text(tmp_path: Path) -> None:
    cases = [
        [-5000, "es"],
        [59_999, "en"],
        [60_000, "es"],
        [59 * 60_000, "en"],
        [125 * 60_000, "es"],
        [(24 * 60 - 1) * 60_000, "en"],
        [(51 * 60 + 30) * 60_000, "es"],
    ]

    result = run_node(tmp_path, {"ages": cases})

    assert result["ages"] == [
        "ahora",
        "just now",
        "1 min",
        "59 min",
        "2 h 5 min",
        "23 h 59 min",
        "2 d 3 h",
    ]


@requires_node
def test_node_labels_fall_back(tmp_path: Path) -> None:
    lifecycle = DEFAULT_LIFECYCLE.to_mapping()
    names = ["PREPARING", "recall", "UNKNOWN"]

    result = run_node(
        tmp_path,
        {
            "labels": {"lifecycle": lifecycle, "language": "es", "names": names},
        },
    )

    assert result["labels"] == ["En preparación", "Devolver a cocina", "UNKNOWN"]


@requires_node
def test_node_labels_missing_language(tmp_path: Path) -> None:
    lifecycle = {**DEFAULT_LIFECYCLE.to_mapping(), "labels": {}}

    result = run_node(
        tmp_path, {"labels": {"lifecycle": lifecycle, "language": "es", "names": ["READY"]}}
    )

    assert result["labels"] == ["READY"]


@requires_node
def test_node_transitions_match_lifecycle(tmp_path: Path) -> None:
    result = run_node(tmp_path, {"transitions": {"lifecycle": DEFAULT_LIFECYCLE.to_mapping()}})

    expected = {
        state: list(DEFAULT_LIFECYCLE.allowed_targets(state)) for state in DEFAULT_LIFECYCLE.states
    }
    assert result["transitions"] == expected


@requires_node
def test_node_error_messages(tmp_path: Path) -> None:
    cases = [
        {"code": "version_conflict"},
        {"code": "invalid_transition"},
        {"code": "invalid_request", "problem": {"field": "reason"}},
        {"code": "invalid_request", "problem": {"field": "to"}},
        {"code": "not_found"},
        {"code": "forbidden"},
        {"code": "unauthorized"},
        {"code": "network"},
        {"code": "storage_unavailable"},
        {"code": "http_502"},
    ]

    result = run_node(tmp_path, {"errors": cases})

    assert result["errors"] == [
        "error_version_conflict",
        "error_invalid_transition",
        "error_reason_required",
        "error_server",
        "error_not_found",
        "error_forbidden",
        "error_unauthorized",
        "error_network",
        "error_server",
        "error_server",
    ]
    assert sorted(set(result["errors"]) - set(strings_table())) == []


@requires_node
def test_node_idempotency_keys(tmp_path: Path) -> None:
    result = run_node(tmp_path, {"keys": 20})

    keys = result["keys"]
    uuid4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
    assert [key for key in keys if not uuid4.match(key)] == []
    assert len(set(keys)) == len(keys)


# FeedClient with a fake WebSocket and a manual clock.

ORDER_A1 = ticket("A", "PENDING", 1)
ORDER_B1 = ticket("B", "CONFIRMED", 2)
ORDER_A2 = ticket("A", "CONFIRMED", 2)
ORDER_A3 = ticket("A", "PREPARING", 3)
START: list[dict[str, Any]] = [{"message": snapshot_message(2, [ORDER_A1, ORDER_B1])}]


def run_client(
    folder: Path, steps: list[dict[str, Any]], *, random_value: float = 1.0, refuse: bool = False
) -> list[Any]:
    """Run ``steps`` on a FeedClient; ``refuse`` makes every connection close at once."""
    scenario = {"terminal": TERMINAL, "random": random_value, "refuse": refuse, "steps": steps}
    records: list[Any] = run_node(folder, {"clients": [scenario]})["clients"][0]
    return records


@requires_node
def test_client_applies_snapshot(tmp_path: Path) -> None:
    records = run_client(tmp_path, START)

    first = records[0]
    assert first["status"] == "connected"
    assert first["outcome"] == "snapshot"
    assert first["last"] == 2
    assert first["digest"] == digest_of([("A", 1), ("B", 2)])
    assert first["sockets"][0]["protocols"] == ["orderflow.v1"]
    assert "since" not in query_of(first["sockets"][0]["url"])


@requires_node
def test_client_gap_resumes(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        *START,
        {"message": event_message(3, ORDER_A2)},
        {"message": event_message(5, ORDER_A3)},
        {"advance": 250},
    ]

    records = run_client(tmp_path, steps)

    applied, gap, resumed = records[1], records[2], records[3]
    assert applied["last"] == 3
    assert gap["last"] == 3
    assert gap["status"] == "reconnecting"
    assert gap["sockets"][0]["closed"]
    assert len(resumed["sockets"]) == 2
    assert query_of(resumed["sockets"][1]["url"]) == {
        "location": "main",
        "since": "3",
        "epoch": "epoch-1",
    }


@requires_node
def test_client_ignores_duplicates(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        *START,
        {"message": event_message(2, ORDER_A2)},
        {"message": event_message(1, ORDER_A2)},
    ]

    records = run_client(tmp_path, steps)

    last = records[-1]
    assert last["states"] == {"A": ["PENDING", 1], "B": ["CONFIRMED", 2]}
    assert last["changes"] == 1
    assert len(last["sockets"]) == 1


@requires_node
def test_client_heartbeat_waits_one_second(tmp_path: Path) -> None:
    own = digest_of([("A", 1), ("B", 2)])
    steps: list[dict[str, Any]] = [
        *START,
        {"message": {"type": "heartbeat", "head": 3, "digest": own}},
        {"advance": 999},
        {"advance": 1},
        {"advance": 0},
    ]

    records = run_client(tmp_path, steps)

    assert len(records[2]["sockets"]) == 1
    assert records[3]["sockets"][0]["closed"]
    assert records[3]["reasons"] == ["a heartbeat announced events that never came"]
    assert query_of(records[-1]["sockets"][-1]["url"])["since"] == "2"


@requires_node
def test_client_heartbeat_then_event(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        *START,
        {"message": {"type": "heartbeat", "head": 3, "digest": "0" * 16}},
        {"advance": 500},
        {"message": event_message(3, ORDER_A2)},
        {"advance": 5000},
    ]

    records = run_client(tmp_path, steps)

    last = records[-1]
    assert last["last"] == 3
    assert last["reasons"] == []
    assert len(last["sockets"]) == 1


@requires_node
def test_client_digest_mismatch_snapshots(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        *START,
        {"message": {"type": "heartbeat", "head": 2, "digest": digest_of([("A", 1), ("B", 2)])}},
        {"message": {"type": "heartbeat", "head": 2, "digest": digest_of([("A", 1)])}},
        {"advance": 5000},
        {"message": snapshot_message(2, [ORDER_A1])},
        {"advance": 2000},
        {"close": 1006},
        {"advance": 0},
    ]

    records = run_client(tmp_path, steps)

    assert len(records[1]["sockets"]) == 1
    assert records[2]["sockets"][0]["closed"]
    assert query_of(records[3]["sockets"][1]["url"]) == {"location": "main"}
    assert records[4]["states"] == {"A": ["PENDING", 1]}
    assert query_of(records[-1]["sockets"][2]["url"])["since"] == "2"


@requires_node
@pytest.mark.parametrize(
    "step",
    [
        {"message": {"type": "resync", "reason": "slow_consumer"}},
        {"close": 1006},
        {"close": 4000},
        {"text": "not json"},
        {"text": "null"},
        {"text": "[1, 2]"},
    ],
    ids=["resync", "close-1006", "close-4000", "not-json", "json-null", "json-array"],
)
def test_client_drop_resumes(tmp_path: Path, step: dict[str, Any]) -> None:
    steps: list[dict[str, Any]] = [*START, {"advance": 2000}, step, {"advance": 0}]

    records = run_client(tmp_path, steps)

    last = records[-1]
    assert len(last["sockets"]) == 2
    assert last["sockets"][1]["at"] == 2000
    assert query_of(last["sockets"][1]["url"])["since"] == "2"


@requires_node
def test_client_resumed_keeps_orders(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        *START,
        {"advance": 2000},
        {"close": 1006},
        {"advance": 0},
        {"message": {"type": "resumed", "epoch": "epoch-1", "since": 2, "head": 3}},
        {"message": event_message(3, ORDER_A2)},
    ]

    records = run_client(tmp_path, steps)

    last = records[-1]
    assert last["status"] == "connected"
    assert last["outcome"] == "resumed"
    assert last["states"] == {"A": ["CONFIRMED", 2], "B": ["CONFIRMED", 2]}


@requires_node
def test_client_resumed_elsewhere_snapshots(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        *START,
        {"advance": 2000},
        {"close": 1006},
        {"advance": 0},
        {"message": {"type": "resumed", "epoch": "epoch-1", "since": 1, "head": 3}},
        {"advance": 5000},
    ]

    records = run_client(tmp_path, steps)

    assert query_of(records[-1]["sockets"][-1]["url"]) == {"location": "main"}


@requires_node
@pytest.mark.parametrize("random_value", [0.0, 1.0])
def test_client_backoff_grows(tmp_path: Path, random_value: float) -> None:
    records = run_client(tmp_path, [{"advance": 30_000}], random_value=random_value, refuse=True)

    opened = [socket["at"] for socket in records[-1]["sockets"]]
    delays = [later - earlier for earlier, later in pairwise(opened)]
    scale = 0.5 + 0.5 * random_value
    expected = [min(5000, 250 * 2**index) * scale for index in range(len(delays))]
    assert len(delays) >= 8
    assert delays == pytest.approx(expected)


@requires_node
def test_client_goes_offline(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [*START, {"advance": 2000}, {"close": 1006}]
    for _ in range(4):
        steps += [{"advance": 3000}, {"close": 1006}]

    records = run_client(tmp_path, steps)

    statuses = [record["status"] for record in records]
    assert statuses[0] == "connected"
    assert statuses[2] == "reconnecting"
    assert statuses[-1] == "offline"


# The screen under Node.js against a real server.

# Follows the feed of a real server with Node's WebSocket and prints the
# mirror as JSON lines. Each JSON line on stdin requests one transition
# through sendTransition.
LIVE_HARNESS = r"""
"use strict";
const readline = require("readline");
const screen = require(process.argv[2]);
const pageHref = process.argv[3];
const token = process.argv[4] || null;

function emit(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

(async () => {
  const lifecycle = await screen.fetchLifecycle(fetch, pageHref, token);
  let connections = 0;
  function CountingWebSocket(url, protocols) {
    connections += 1;
    return new WebSocket(url, protocols);
  }
  const client = new screen.FeedClient({
    pageHref: pageHref,
    location: new URL(pageHref).searchParams.get("location") || "main",
    token: token,
    terminal: lifecycle.terminal,
    WebSocketImpl: CountingWebSocket,
    onChange: report,
    onStatus: report,
  });
  function report() {
    const states = {};
    for (const [id, order] of client.mirror.orders) {
      states[id] = [order.state, order.version];
    }
    emit({
      kind: "state",
      status: client.status,
      outcome: client.lastOutcome,
      connections: connections,
      last: client.mirror.last,
      digest: client.mirror.digest,
      states: states,
    });
  }
  client.start();

  const lines = readline.createInterface({input: process.stdin});
  lines.on("line", async (line) => {
    const command = JSON.parse(line);
    const order = Object.assign({}, client.mirror.orders.get(command.id));
    if (command.version !== undefined) {
      order.version = command.version;
    }
    const result = await screen.sendTransition({
      fetchImpl: fetch,
      pageHref: pageHref,
      token: token,
      order: order,
      to: command.to,
      reason: command.reason === undefined ? null : command.reason,
      key: command.key || screen.newIdempotencyKey(globalThis.crypto),
    });
    emit(Object.assign({kind: "result"}, result));
  });
  lines.on("close", () => {
    client.stop();
    process.exit(0);
  });
})().catch((error) => {
  emit({kind: "error", error: String(error && error.stack || error)});
  process.exit(1);
});
"""


@cache
def node_websocket_flags() -> list[str] | None:
    """Return the node flags that give a global WebSocket, or None when it has none."""
    if NODE is None:
        return None
    for flags in ([], ["--experimental-websocket"]):
        probe = subprocess.run(
            [NODE, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0:
            return flags
    return None


@pytest.fixture
def websocket_flags() -> list[str]:
    """Skip before any server starts when node has no WebSocket."""
    flags = node_websocket_flags()
    if flags is None:
        pytest.skip(
            "node is missing or has no WebSocket; the live screen tests need Node.js 20.10 or later"
        )
    return flags


class NodeScreen:
    """The live harness as a child process: its latest state and its replies."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.state: dict[str, Any] = {}
        self._buffer = b""

    async def next_message(self) -> dict[str, Any]:
        """Read the next JSON line; a state line also becomes ``self.state``."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            try:
                self._buffer += await self.process.stdout.receive()
            except anyio.EndOfStream:
                raise AssertionError("the live harness exited") from None
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        if message["kind"] == "error":
            raise AssertionError(f"the live harness failed: {message['error']}")
        if message["kind"] == "state":
            self.state = message
        return message

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> None:
        with anyio.fail_after(timeout):
            while not (self.state and predicate(self.state)):
                await self.next_message()

    async def transition(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        await self.process.stdin.send((json.dumps(command) + "\n").encode())
        with anyio.fail_after(10):
            while True:
                message = await self.next_message()
                if message["kind"] == "result":
                    return message


@asynccontextmanager
async def node_screen(
    folder: Path, flags: list[str], page_url: str, token: str | None = None
) -> AsyncIterator[NodeScreen]:
    assert NODE is not None
    harness = folder / "live.cjs"
    harness.write_text(LIVE_HARNESS, encoding="utf-8")
    command = [NODE, *flags, str(harness), str(install_script(folder)), page_url]
    if token is not None:
        command.append(token)
    process = await anyio.open_process(command, stderr=subprocess.DEVNULL)
    try:
        yield NodeScreen(process)
    finally:
        if process.stdin is not None:
            await process.stdin.aclose()
        with anyio.move_on_after(5):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


async def wait_in_step(node: NodeScreen, client: HttpClient) -> dict[str, Any]:
    """Wait until the Node screen has the server's head and digest; return the server's view."""
    active = await client.active()
    await node.wait_for(
        lambda state: (
            state["status"] == "connected"
            and state["last"] == active["head"]
            and state["digest"] == active["digest"]
        )
    )
    return active


@pytest.mark.anyio
async def test_live_screen_follows_feed(
    database_url: str, tmp_path: Path, websocket_flags: list[str]
) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as client:
        engine = server.engine
        first = await engine.create(ITEMS, meta={"table": 4})
        second = await engine.create(ITEMS)

        async with node_screen(tmp_path, websocket_flags, server.url + "/screen?lang=es") as node:
            await wait_in_step(node, client)
            assert node.state["outcome"] == "snapshot"

            await engine.transition(first.id, "CONFIRMED", expected_version=1)
            await engine.transition(second.id, "REJECTED", expected_version=1)
            await engine.create(ITEMS, meta={"table": "terraza"})
            await wait_in_step(node, client)
            assert node.state["states"][first.id] == ["CONFIRMED", 2]
            assert second.id not in node.state["states"]


@pytest.mark.anyio
async def test_live_screen_resumes_after_resync(
    database_url: str, tmp_path: Path, websocket_flags: list[str]
) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as client:
        engine = server.engine
        order = await engine.create(ITEMS)

        async with node_screen(tmp_path, websocket_flags, server.url + "/screen") as node:
            await wait_in_step(node, client)
            for session in server.server.sessions:
                session.stop("slow_consumer")
            await engine.transition(order.id, "CONFIRMED", expected_version=1)

            await wait_in_step(node, client)
            await node.wait_for(lambda state: state["connections"] == 2)
            assert node.state["outcome"] == "resumed"
            assert node.state["states"][order.id] == ["CONFIRMED", 2]


@pytest.mark.anyio
async def test_live_transitions(
    database_url: str, tmp_path: Path, websocket_flags: list[str]
) -> None:
    async with running_server(database_url) as server, HttpClient(server.url) as client:
        order = await server.engine.create(ITEMS)

        async with node_screen(tmp_path, websocket_flags, server.url + "/screen") as node:
            await wait_in_step(node, client)

            confirmed = await node.transition(id=order.id, to="CONFIRMED", key="screen-1")
            repeated = await node.transition(id=order.id, to="CONFIRMED", version=1, key="screen-1")
            stale = await node.transition(id=order.id, to="PREPARING", version=1)
            await wait_in_step(node, client)
            skipped = await node.transition(id=order.id, to="COMPLETED")
            no_reason = await node.transition(id=order.id, to="CANCELLED")
            cancelled = await node.transition(id=order.id, to="CANCELLED", reason="sin masa")
            await wait_in_step(node, client)

        history = await client.history(order.id)

    assert confirmed["ok"]
    assert repeated["order"] == confirmed["order"]
    assert stale["code"] == "version_conflict"
    assert skipped["code"] == "invalid_transition"
    assert no_reason["code"] == "invalid_request"
    assert no_reason["problem"]["field"] == "reason"
    assert cancelled["ok"]
    assert order.id not in node.state["states"]
    assert [event["to"] for event in history] == ["PENDING", "CONFIRMED", "CANCELLED"]
    assert history[-1]["reason"] == "sin masa"


@pytest.mark.anyio
async def test_live_screen_with_token(
    database_url: str, tmp_path: Path, websocket_flags: list[str]
) -> None:
    config = ServerConfig(tokens={"kitchen-token": TokenInfo(actor="pass")})
    async with (
        running_server(database_url, config=config) as server,
        HttpClient(server.url, token="kitchen-token") as client,
    ):
        order = await server.engine.create(ITEMS)

        async with node_screen(
            tmp_path, websocket_flags, server.url + "/screen", "kitchen-token"
        ) as node:
            await wait_in_step(node, client)
            result = await node.transition(id=order.id, to="CONFIRMED")
            await wait_in_step(node, client)

        history = await client.history(order.id)

    assert result["ok"]
    assert history[-1]["actor"] == "pass"


# The page itself under Node.js, with a small fake DOM.

# Builds the elements of screen.html that have an id or data attributes, runs
# startPage with a fake window (fetch, WebSocket and timers), and plays the
# steps of the input: feed messages, clicks, form submits.
PAGE_HARNESS = r"""
"use strict";
const fs = require("fs");
const screen = require(process.argv[2]);
const input = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));

class FakeElement {
  constructor(tag, attrs) {
    this.tagName = tag.toUpperCase();
    this.attributes = Object.assign({}, attrs || {});
    this.id = this.attributes.id || "";
    this.className = this.attributes.class || "";
    this.hidden = "hidden" in this.attributes;
    this.dataset = {};
    for (const [name, value] of Object.entries(this.attributes)) {
      if (name.startsWith("data-")) {
        const key = name.slice(5).replace(/-([a-z])/g, (whole, letter) => letter.toUpperCase());
        this.dataset[key] = value;
      }
    }
    this.children = [];
    this.ownText = "";
    this.listeners = {};
    this.disabled = false;
    this.open = false;
    this.value = "";
  }
  get textContent() {
    return this.ownText + this.children.map((child) => child.textContent).join("");
  }
  set textContent(value) {
    this.ownText = String(value);
    this.children = [];
  }
  append(...nodes) {
    this.children.push(...nodes);
  }
  replaceChildren(...nodes) {
    this.ownText = "";
    this.children = nodes;
  }
  setAttribute(name, value) {
    this.attributes[name] = String(value);
  }
  addEventListener(type, listener) {
    (this.listeners[type] = this.listeners[type] || []).push(listener);
  }
  click() {
    for (const listener of this.listeners.click || []) {
      listener({});
    }
    if (this.onclick) {
      this.onclick({});
    }
  }
  focus() {}
  showModal() {
    this.open = true;
  }
  close() {
    this.open = false;
  }
  *walk() {
    yield this;
    for (const child of this.children) {
      yield* child.walk();
    }
  }
}

const byId = new Map();
const roots = [];
for (const spec of input.elements) {
  const element = new FakeElement(spec.tag, spec.attrs);
  roots.push(element);
  if (element.id) {
    byId.set(element.id, element);
  }
}
const documentElement = new FakeElement("html", {lang: "en"});
const document = {
  documentElement: documentElement,
  title: "",
  createElement: (tag) => new FakeElement(tag),
  getElementById: (id) => {
    if (!byId.has(id)) {
      throw new Error("screen.js asked for #" + id + ", which screen.html does not have");
    }
    return byId.get(id);
  },
  querySelectorAll: (selector) => {
    const match = /^\[data-([a-z0-9-]+)\]$/.exec(selector);
    if (!match) {
      throw new Error("the fake DOM supports only [data-*] selectors, not " + selector);
    }
    const key = match[1].replace(/-([a-z])/g, (whole, letter) => letter.toUpperCase());
    const found = [];
    for (const root of roots) {
      for (const element of root.walk()) {
        if (key in element.dataset) {
          found.push(element);
        }
      }
    }
    return found;
  },
};

const sockets = [];
class FakeSocket {
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    sockets.push(this);
  }
  close() {}
}

const requests = [];
const replies = input.replies.slice();
function respond(status, body) {
  return Promise.resolve({
    ok: status >= 200 && status < 300,
    status: status,
    json: () => Promise.resolve(body),
  });
}
const location = new URL(input.page);
const window = {
  document: document,
  location: {
    get href() { return location.toString(); },
    get search() { return location.search; },
  },
  navigator: {language: input.browserLanguage},
  history: {
    replaceState: (state, title, url) => {
      location.href = new URL(url, location.toString()).toString();
    },
  },
  crypto: globalThis.crypto,
  console: {info: () => {}},
  WebSocket: FakeSocket,
  fetch: (url, init) => {
    const method = (init && init.method) || "GET";
    requests.push({method: method, url: String(url), headers: (init && init.headers) || {}, body: init && init.body ? JSON.parse(init.body) : null});
    if (method === "GET" && new URL(url).pathname === "/lifecycle") {
      return respond(200, input.lifecycle);
    }
    const reply = replies.shift();
    return respond(reply.status, reply.body);
  },
  requestAnimationFrame: (callback) => callback(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (timer) => clearTimeout(timer),
  setInterval: () => 0,
  addEventListener: () => {},
  prompt: () => null,
};

function settle() {
  return new Promise((resolve) => setImmediate(resolve)).then(() => new Promise((resolve) => setImmediate(resolve)));
}

function buttonsOf(element) {
  return Array.from(element.walk()).filter((node) => node.tagName === "BUTTON");
}

function view() {
  const board = byId.get("board");
  return {
    lang: documentElement.lang,
    title: document.title,
    status: byId.get("status").textContent,
    count: byId.get("count").textContent,
    heading: roots.find((element) => element.tagName === "H1").textContent,
    toggle: byId.get("language-toggle").textContent,
    notice: byId.get("notice").hidden ? null : byId.get("notice-text").textContent,
    empty: !byId.get("empty").hidden,
    dialog: byId.get("reason-dialog").open ? byId.get("reason-title").textContent : null,
    reasonMissing: !byId.get("reason-missing").hidden,
    href: location.toString(),
    lanes: board.children.map((lane) => ({
      title: lane.children[0].children[0].textContent,
      count: lane.children[0].children[1].textContent,
      tickets: lane.children.slice(1).map((ticket) => ({
        label: ticket.attributes["aria-label"],
        text: ticket.textContent,
        buttons: buttonsOf(ticket).map((button) => ({text: button.textContent, kind: button.className, disabled: button.disabled})),
      })),
    })),
  };
}

function findButton(orderId, text) {
  for (const lane of byId.get("board").children) {
    for (const ticket of lane.children.slice(1)) {
      if (ticket.attributes["aria-label"].endsWith(" " + orderId)) {
        const button = buttonsOf(ticket).find((node) => node.textContent === text);
        if (button) {
          return button;
        }
      }
    }
  }
  throw new Error("no button " + text + " on order " + orderId);
}

(async () => {
  screen.startPage(window);
  await settle();
  const views = [];
  for (const step of input.steps) {
    if (step.message) {
      sockets[sockets.length - 1].onmessage({data: JSON.stringify(step.message)});
    } else if (step.click) {
      findButton(step.click[0], step.click[1]).click();
    } else if (step.press) {
      byId.get(step.press).click();
    } else if (step.chip !== undefined) {
      document.querySelectorAll("[data-quick-reason]")[step.chip].click();
    } else if (step.submit) {
      byId.get("reason-form").onsubmit({preventDefault: () => {}});
    }
    await settle();
    views.push(view());
  }
  process.stdout.write(JSON.stringify({views: views, requests: requests, sockets: sockets.map((s) => s.url)}));
  process.exit(0);
})().catch((error) => {
  process.stderr.write(String(error && error.stack || error));
  process.exit(1);
});
"""


class _Elements(HTMLParser):
    """Collects the elements of screen.html that have an id or data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "h1" or "id" in values or any(name.startswith("data-") for name in values):
            self.elements.append({"tag": tag, "attrs": values})


def run_page(folder: Path, steps: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """Run startPage in the fake DOM, play ``steps`` and return the views and requests."""
    assert NODE is not None
    parser = _Elements()
    parser.feed(PAGE)
    parser.close()
    data = {
        "elements": parser.elements,
        "lifecycle": DEFAULT_LIFECYCLE.to_mapping(),
        "page": options.get("page", "http://127.0.0.1:8080/screen?location=main&token=tok"),
        "browserLanguage": options.get("browser_language", "es-ES"),
        "replies": options.get("replies", []),
        "steps": steps,
    }
    harness = folder / "page.cjs"
    harness.write_text(PAGE_HARNESS, encoding="utf-8")
    (folder / "page.json").write_text(json.dumps(data), encoding="utf-8")
    completed = subprocess.run(
        [NODE, str(harness), str(install_script(folder)), str(folder / "page.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


KITCHEN = snapshot_message(
    4,
    [
        {**ticket("T-1", "PENDING", 1), "meta": {"table": 12}},
        {
            **ticket("T-2", "PREPARING", 3),
            "items": [{"name": "<b>Diavola</b>", "quantity": 3, "notes": "bien hecha"}],
            "meta": {},
        },
    ],
)


@requires_node
def test_page_renders_tickets(tmp_path: Path) -> None:
    result = run_page(tmp_path, [{"message": KITCHEN}])

    view = result["views"][0]
    assert view["status"] == "Conectado"
    assert view["lang"] == "es"
    assert view["count"] == "2 pedidos"
    assert [lane["title"] for lane in view["lanes"]] == [
        "Pendiente",
        "Confirmado",
        "En preparación",
        "Listo",
    ]
    pending = view["lanes"][0]["tickets"][0]
    assert pending["label"] == "Pedido T-1"
    assert "Mesa 12" in pending["text"]
    assert "2×Margherita" in pending["text"]
    assert [button["text"] for button in pending["buttons"]] == [
        "Confirmar",
        "Cancelar",
        "Rechazar",
    ]
    assert [button["kind"] for button in pending["buttons"]] == [
        "action primary",
        "action danger",
        "action danger",
    ]
    preparing = view["lanes"][2]["tickets"][0]
    assert "3×<b>Diavola</b>" in preparing["text"]
    assert "Nota: bien hecha" in preparing["text"]


@requires_node
def test_page_connects_with_token(tmp_path: Path) -> None:
    result = run_page(tmp_path, [{"message": KITCHEN}])

    assert query_of(result["sockets"][0]) == {"location": "main", "token": "tok"}
    lifecycle_request = result["requests"][0]
    assert lifecycle_request["url"] == "http://127.0.0.1:8080/lifecycle"
    assert lifecycle_request["headers"]["Authorization"] == "Bearer tok"


@requires_node
def test_page_posts_transition(tmp_path: Path) -> None:
    replies = [{"status": 200, "body": ticket("T-1", "CONFIRMED", 2)}]

    result = run_page(
        tmp_path, [{"message": KITCHEN}, {"click": ["T-1", "Confirmar"]}], replies=replies
    )

    post = result["requests"][-1]
    assert post["method"] == "POST"
    assert post["url"] == "http://127.0.0.1:8080/orders/T-1/transitions"
    assert post["body"] == {"to": "CONFIRMED", "expected_version": 1}
    assert post["headers"]["Authorization"] == "Bearer tok"
    assert re.fullmatch(r"[0-9a-f-]{36}", post["headers"]["Idempotency-Key"])
    # The response is not applied: only the feed changes the tickets.
    assert result["views"][-1]["lanes"][0]["tickets"][0]["label"] == "Pedido T-1"
    assert result["views"][-1]["notice"] is None


@requires_node
@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("version_conflict", "El pedido T-1 cambió en otra pantalla."),
        ("invalid_transition", "El pedido T-1 ya no admite ese cambio."),
    ],
)
def test_page_shows_conflict(tmp_path: Path, code: str, message: str) -> None:
    replies = [{"status": 409, "body": {"status": 409, "code": code, "title": "Conflict"}}]
    steps: list[dict[str, Any]] = [
        {"message": KITCHEN},
        {"click": ["T-1", "Confirmar"]},
        {"message": event_message(5, ticket("T-1", "CONFIRMED", 2))},
    ]

    result = run_page(tmp_path, steps, replies=replies)

    assert result["views"][1]["notice"].startswith(message)
    following = result["views"][2]
    assert following["status"] == "Conectado"
    assert following["lanes"][1]["tickets"][0]["label"] == "Pedido T-1"


@requires_node
def test_page_asks_reason(tmp_path: Path) -> None:
    replies = [{"status": 200, "body": ticket("T-2", "CANCELLED", 4)}]
    steps: list[dict[str, Any]] = [
        {"message": KITCHEN},
        {"click": ["T-2", "Cancelar"]},
        {"submit": True},
        {"chip": 1},
        {"submit": True},
    ]

    result = run_page(tmp_path, steps, replies=replies)

    opened, empty, _, sent = result["views"][1:5]
    assert opened["dialog"] == "Cancelar: pedido T-2"
    assert empty["reasonMissing"]
    assert empty["dialog"] is not None
    assert sent["dialog"] is None
    post = result["requests"][-1]
    assert post["body"] == {
        "to": "CANCELLED",
        "expected_version": 3,
        "reason": "Producto agotado",
    }


@requires_node
def test_page_reason_back_sends_nothing(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [
        {"message": KITCHEN},
        {"click": ["T-2", "Cancelar"]},
        {"press": "reason-back"},
    ]

    result = run_page(tmp_path, steps)

    assert result["views"][-1]["dialog"] is None
    assert [request["method"] for request in result["requests"]] == ["GET"]


@requires_node
def test_page_switches_language(tmp_path: Path) -> None:
    steps: list[dict[str, Any]] = [{"message": KITCHEN}, {"press": "language-toggle"}]

    result = run_page(tmp_path, steps)

    spanish, english = result["views"]
    assert spanish["toggle"] == "English"
    assert english["lang"] == "en"
    assert english["heading"] == "Kitchen"
    assert english["status"] == "Connected"
    assert [lane["title"] for lane in english["lanes"]][:3] == ["Pending", "Confirmed", "Preparing"]
    assert query_of(english["href"])["lang"] == "en"


@requires_node
def test_page_language_from_query(tmp_path: Path) -> None:
    result = run_page(
        tmp_path,
        [{"message": snapshot_message(0, [])}],
        page="http://127.0.0.1:8080/screen?lang=en",
        browser_language="es-MX",
    )

    view = result["views"][0]
    assert view["heading"] == "Kitchen"
    assert view["count"] == "0 orders"
    assert view["empty"]


@requires_node
def test_page_rejects_bad_location(tmp_path: Path) -> None:
    result = run_page(tmp_path, [{}], page="http://127.0.0.1:8080/screen?location=a%20b")

    view = result["views"][0]
    assert view["notice"] == "El local de la dirección no es válido: a b"
    assert result["sockets"] == []
