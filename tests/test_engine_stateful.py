"""A Hypothesis state machine that drives the engine against a plain model.

Each step creates, moves or edits orders (with right and wrong versions,
client ids that may be taken, idempotency keys that may repeat with the same
or a different body, cancels with and without a reason, whole transactions
that roll back), applies the same step to a dictionary model, and then
checks the invariants:

1. a change commits the new state, the new version and its event together,
   or nothing changes;
2. per location the events are numbered 1..head with no gap or duplicate;
3. a repeated idempotency key returns the first result and writes nothing,
   and the same key with another body is rejected;
4. a second change with an already used expected version is a conflict;
5. the snapshot equals the state after applying events 1..head, and its
   digest equals the digest of that state;

and that the broker received exactly the committed events, in order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orderflow import (
    DEFAULT_LIFECYCLE,
    Engine,
    IdConflict,
    IdempotencyKeyReused,
    InvalidTransition,
    OrderNotEditable,
    OrderNotFound,
    ReasonRequired,
    VersionConflict,
)
from orderflow.broker import MemoryBroker
from orderflow.digest import digest_of
from tests.conftest import service_url

LOCATIONS = ("main", "terrace")
CLIENT_IDS = ("T1-001", "T1-002", "bar.7")
KEYS = ("key-a", "key-b", "key-c")
STATES = DEFAULT_LIFECYCLE.states

items_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["Margherita", "Café con leche", "Calzone", "Agua"]),
            "quantity": st.integers(1, 4),
        },
        optional={"station": st.sampled_from(["oven", "bar"]), "notes": st.text(max_size=8)},
    ),
    min_size=1,
    max_size=3,
)


@dataclass
class ModelOrder:
    location: str
    state: str
    version: int
    items: list[dict[str, Any]]
    meta: dict[str, Any]


@dataclass
class Model:
    orders: dict[str, ModelOrder] = field(default_factory=dict)
    # (location, kind, order id, state after, version after) per committed event.
    events: dict[str, list[tuple[str, str, str, int]]] = field(
        default_factory=lambda: {location: [] for location in LOCATIONS}
    )
    # (location, key) -> (request description, (order id, state, version) of the first result)
    keys: dict[tuple[str, str], tuple[tuple[Any, ...], tuple[str, str, int]]] = field(
        default_factory=dict
    )


class EngineMachine(RuleBasedStateMachine):
    """Compare the engine with the model after every step."""

    open_database: Any = None  # set by the test function: a context manager factory

    def __init__(self) -> None:
        super().__init__()
        self._stack = ExitStack()
        url = self._stack.enter_context(self.open_database())
        self.broker = MemoryBroker()
        self.subscription = self.broker.subscribe()
        self.engine = self._stack.enter_context(Engine.open(url, self.broker))
        self.model = Model()
        self.published: dict[str, list[int]] = {location: [] for location in LOCATIONS}
        self.generated_ids = itertools.count()

    def teardown(self) -> None:
        self.subscription.close()
        self._stack.close()

    # Helpers.

    def _record(self, location: str, kind: str, order_id: str) -> None:
        order = self.model.orders[order_id]
        self.model.events[location].append((kind, order_id, order.state, order.version))

    def _existing(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.model.orders)), label="order")

    # Rules.

    @rule(
        location=st.sampled_from(LOCATIONS),
        items=items_strategy,
        client_id=st.none() | st.sampled_from(CLIENT_IDS),
        key=st.none() | st.sampled_from(KEYS),
        table=st.integers(1, 20),
    )
    def create(
        self,
        location: str,
        items: list[dict[str, Any]],
        client_id: str | None,
        key: str | None,
        table: int,
    ) -> None:
        meta = {"table": table}
        description = ("create", client_id, repr(items), table)
        remembered = self.model.keys.get((location, key)) if key else None
        head_before = len(self.model.events[location])

        if remembered is not None and remembered[0] != description:
            with pytest.raises(IdempotencyKeyReused):
                self.engine.create(items, id=client_id, location=location, meta=meta, idempotency_key=key)
            return
        if remembered is not None:
            order = self.engine.create(
                items, id=client_id, location=location, meta=meta, idempotency_key=key
            )
            assert (order.id, order.state, order.version) == remembered[1]
            assert self.engine.position(location).head == head_before
            return
        if client_id is not None and client_id in self.model.orders:
            with pytest.raises(IdConflict):
                self.engine.create(items, id=client_id, location=location, meta=meta, idempotency_key=key)
            return

        order = self.engine.create(items, id=client_id, location=location, meta=meta, idempotency_key=key)
        assert order.state == "PENDING"
        assert order.version == 1
        self.model.orders[order.id] = ModelOrder(location, "PENDING", 1, items, meta)
        self._record(location, "order.created", order.id)
        if key:
            self.model.keys[(location, key)] = (description, (order.id, "PENDING", 1))

    @precondition(lambda self: bool(self.model.orders))
    @rule(
        data=st.data(),
        to=st.sampled_from(STATES),
        version_offset=st.sampled_from([None, 0, 0, 0, -1, 1]),
        reason=st.sampled_from([None, "", "   ", "customer left"]),
        key=st.none() | st.sampled_from(KEYS),
    )
    def transition(
        self,
        data: st.DataObject,
        to: str,
        version_offset: int | None,
        reason: str | None,
        key: str | None,
    ) -> None:
        target = to
        order_id = self._existing(data)
        current = self.model.orders[order_id]
        expected = None if version_offset is None else current.version + version_offset
        if expected is not None and expected < 1:
            expected = current.version + 1
        description = ("transition", order_id, target, expected, reason)
        remembered = self.model.keys.get((current.location, key)) if key else None
        head_before = len(self.model.events[current.location])

        def call() -> Any:
            return self.engine.transition(
                order_id, target, expected_version=expected, reason=reason, idempotency_key=key
            )

        if remembered is not None:
            if remembered[0] != description:
                with pytest.raises(IdempotencyKeyReused):
                    call()
            else:
                order = call()
                assert (order.id, order.state, order.version) == remembered[1]
            assert self.engine.position(current.location).head == head_before
            return

        rule_ = DEFAULT_LIFECYCLE.rule(current.state, target)
        if expected is not None and expected != current.version:
            with pytest.raises(VersionConflict) as caught:
                call()
            assert caught.value.expected == expected
            assert caught.value.actual == current.version
            return
        if rule_ is None:
            with pytest.raises(InvalidTransition) as invalid:
                call()
            assert set(invalid.value.allowed) == set(DEFAULT_LIFECYCLE.allowed_targets(current.state))
            return
        if rule_.reason_required and not (reason and reason.strip()):
            with pytest.raises(ReasonRequired):
                call()
            return

        order = call()
        current.state = target
        current.version += 1
        assert order.state == target
        assert order.version == current.version
        self._record(current.location, "order.transitioned", order_id)
        if key:
            self.model.keys[(current.location, key)] = (
                description,
                (order_id, current.state, current.version),
            )

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data(), items=items_strategy)
    def update_items(self, data: st.DataObject, items: list[dict[str, Any]]) -> None:
        order_id = self._existing(data)
        current = self.model.orders[order_id]
        if current.state not in DEFAULT_LIFECYCLE.editable:
            with pytest.raises(OrderNotEditable):
                self.engine.update(order_id, items=items, expected_version=current.version)
            return
        order = self.engine.update(order_id, items=items, expected_version=current.version)
        current.items = items
        current.version += 1
        assert order.version == current.version
        self._record(current.location, "order.updated", order_id)

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def stale_race(self, data: st.DataObject) -> None:
        """Two changes with the same expected version: the second conflicts."""
        order_id = self._existing(data)
        current = self.model.orders[order_id]
        if current.state not in DEFAULT_LIFECYCLE.editable:
            return
        version = current.version
        self.engine.update(order_id, meta={"note": "first"}, expected_version=version)
        current.meta = {"note": "first"}
        current.version += 1
        self._record(current.location, "order.updated", order_id)
        with pytest.raises(VersionConflict):
            self.engine.update(order_id, meta={"note": "second"}, expected_version=version)

    @rule(location=st.sampled_from(LOCATIONS), items=items_strategy)
    def rolled_back_transaction(self, location: str, items: list[dict[str, Any]]) -> None:
        """A transaction that creates and moves an order, then raises: nothing stays."""

        class Abort(Exception):
            pass

        created: list[str] = []

        def create_move_and_fail() -> None:
            with self.engine.transaction() as tx:
                order = tx.create(items, location=location)
                created.append(order.id)
                tx.transition(order.id, "CONFIRMED", expected_version=1)
                raise Abort

        with pytest.raises(Abort):
            create_move_and_fail()
        with pytest.raises(OrderNotFound):
            self.engine.get(created[0])

    @rule(location=st.sampled_from(LOCATIONS), items=items_strategy)
    def committed_transaction(self, location: str, items: list[dict[str, Any]]) -> None:
        """Two changes in one transaction commit together, in order."""
        with self.engine.transaction() as tx:
            order = tx.create(items, location=location)
            tx.transition(order.id, "CONFIRMED", expected_version=1)
        self.model.orders[order.id] = ModelOrder(location, "PENDING", 1, items, {})
        self._record(location, "order.created", order.id)
        self.model.orders[order.id].state = "CONFIRMED"
        self.model.orders[order.id].version = 2
        self._record(location, "order.transitioned", order.id)

    # Invariants.

    @invariant()
    def rows_match_model(self) -> None:
        for order_id, expected in self.model.orders.items():
            order = self.engine.get(order_id)
            assert order.location == expected.location
            assert order.state == expected.state
            assert order.version == expected.version
            assert [item.to_dict() for item in order.items] == expected.items

    @invariant()
    def log_is_gap_free_and_matches_model(self) -> None:
        for location in LOCATIONS:
            page = self.engine.events_since(0, location=location, limit=10_000)
            assert [event.seq for event in page.events] == list(range(1, page.head + 1))
            described = [
                (event.kind, event.order_id, event.to_state, event.version) for event in page.events
            ]
            assert described == self.model.events[location]
            for event in page.events:
                assert event.order.version == event.version
                assert event.order.state == event.to_state

    @invariant()
    def snapshot_equals_replay(self) -> None:
        for location in LOCATIONS:
            snapshot = self.engine.snapshot(location)
            page = self.engine.events_since(0, location=location, limit=10_000)
            assert snapshot.head == page.head
            replayed: dict[str, tuple[str, int]] = {}
            for event in page.events:
                if DEFAULT_LIFECYCLE.is_active(event.to_state):
                    replayed[event.order_id] = (event.to_state, event.version)
                else:
                    replayed.pop(event.order_id, None)
            in_snapshot = {order.id: (order.state, order.version) for order in snapshot.orders}
            assert in_snapshot == replayed
            expected_digest = digest_of((order_id, v) for order_id, (_, v) in replayed.items())
            assert snapshot.digest == expected_digest

    @invariant()
    def broker_saw_exactly_the_commits(self) -> None:
        for publication in self.subscription.receive_nowait():
            self.published[publication.location].append(publication.seq)
        for location in LOCATIONS:
            assert self.published[location] == list(range(1, len(self.model.events[location]) + 1))


def test_engine_matches_model(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        counter = itertools.count()

        @contextmanager
        def open_database() -> Iterator[str]:
            yield f"sqlite:///{tmp_path / f'machine-{next(counter)}.db'}"

    else:
        from tests.pg_support import fresh_schema_url

        base = service_url("ORDERFLOW_TEST_POSTGRES_URL", "PostgreSQL")

        def open_database() -> Any:
            return fresh_schema_url(base)

    class Machine(EngineMachine):
        pass

    Machine.open_database = staticmethod(open_database)
    run_state_machine_as_test(Machine)
