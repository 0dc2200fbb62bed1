"""Unit tests of lifecycles: the default table, loading, validation and export."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from orderflow.errors import LifecycleError
from orderflow.lifecycle import DEFAULT_LIFECYCLE, RESTAURANT_LIFECYCLE, Lifecycle, TransitionRule

STATES = ("PENDING", "CONFIRMED", "PREPARING", "READY", "COMPLETED", "CANCELLED", "REJECTED")
TERMINAL = frozenset({"COMPLETED", "CANCELLED", "REJECTED"})

# The default lifecycle written out by hand, one rule per allowed pair. The
# lifecycle must have no rule for any pair missing here.
DEFAULT_RULES: dict[tuple[str, str], TransitionRule] = {
    ("PENDING", "CONFIRMED"): TransitionRule("PENDING", "CONFIRMED", "confirm"),
    ("CONFIRMED", "PREPARING"): TransitionRule("CONFIRMED", "PREPARING", "start"),
    ("PREPARING", "READY"): TransitionRule("PREPARING", "READY", "ready"),
    ("READY", "COMPLETED"): TransitionRule("READY", "COMPLETED", "complete"),
    ("READY", "PREPARING"): TransitionRule("READY", "PREPARING", "recall"),
    ("PENDING", "CANCELLED"): TransitionRule("PENDING", "CANCELLED", "cancel", True),
    ("CONFIRMED", "CANCELLED"): TransitionRule("CONFIRMED", "CANCELLED", "cancel", True),
    ("PREPARING", "CANCELLED"): TransitionRule("PREPARING", "CANCELLED", "cancel", True),
    ("PENDING", "REJECTED"): TransitionRule("PENDING", "REJECTED", "reject"),
}

ALL_PAIRS = [(source, target) for source in STATES for target in STATES]
ALLOWED_PAIRS = [pair for pair in ALL_PAIRS if pair in DEFAULT_RULES]
DISALLOWED_PAIRS = [pair for pair in ALL_PAIRS if pair not in DEFAULT_RULES]


def pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


def bar_tab(**changes: Any) -> dict[str, Any]:
    """Return a small valid lifecycle mapping, with top-level keys replaced by ``changes``."""
    definition: dict[str, Any] = {
        "name": "bar-tab",
        "initial": "OPEN",
        "states": ["OPEN", "PAID", "VOID"],
        "terminal": ["PAID", "VOID"],
        "transitions": [
            {"from": "OPEN", "to": "PAID", "name": "pay"},
            {
                "from": "OPEN",
                "to": "VOID",
                "name": "void",
                "reason_required": True,
                "roles": ["manager"],
            },
        ],
    }
    definition.update(changes)
    return definition


def with_transitions(*extra: Any, **changes: Any) -> dict[str, Any]:
    """Return ``bar_tab(**changes)`` with ``extra`` transitions appended."""
    definition = bar_tab(**changes)
    definition["transitions"] = [*definition["transitions"], *extra]
    return definition


BAR_TAB_TOML = """\
name = "bar-tab"
initial = "OPEN"
states = ["OPEN", "PAID", "VOID"]
terminal = ["PAID", "VOID"]

[[transitions]]
from = "OPEN"
to = "PAID"
name = "pay"

[[transitions]]
from = "OPEN"
to = "VOID"
name = "void"
reason_required = true
roles = ["manager"]
"""

VOID_RULE = TransitionRule("OPEN", "VOID", "void", True, frozenset({"manager"}))


# The default restaurant lifecycle.


@pytest.mark.parametrize(("source", "target"), ALL_PAIRS, ids=map(pair_id, ALL_PAIRS))
def test_default_rule_table(source: str, target: str) -> None:
    assert DEFAULT_LIFECYCLE.rule(source, target) == DEFAULT_RULES.get((source, target))


@pytest.mark.parametrize("state", STATES)
def test_default_allowed_targets(state: str) -> None:
    expected = sorted(target for (source, target) in DEFAULT_RULES if source == state)

    assert sorted(DEFAULT_LIFECYCLE.allowed_targets(state)) == expected


@pytest.mark.parametrize("state", STATES)
def test_default_terminal_states(state: str) -> None:
    assert DEFAULT_LIFECYCLE.is_terminal(state) is (state in TERMINAL)
    assert DEFAULT_LIFECYCLE.is_active(state) is (state not in TERMINAL)


def test_default_shape() -> None:
    assert DEFAULT_LIFECYCLE.name == "restaurant"
    assert DEFAULT_LIFECYCLE.initial == "PENDING"
    assert DEFAULT_LIFECYCLE.states == STATES
    assert DEFAULT_LIFECYCLE.terminal == TERMINAL
    assert set(DEFAULT_LIFECYCLE.rules) == set(DEFAULT_RULES.values())
    assert len(DEFAULT_LIFECYCLE.rules) == len(DEFAULT_RULES)


def test_default_editable_states() -> None:
    assert DEFAULT_LIFECYCLE.editable == {"PENDING", "CONFIRMED", "PREPARING", "READY"}


def test_unknown_state_has_no_rule() -> None:
    assert DEFAULT_LIFECYCLE.rule("SHIPPED", "PENDING") is None
    assert DEFAULT_LIFECYCLE.rule("PENDING", "SHIPPED") is None
    assert DEFAULT_LIFECYCLE.allowed_targets("SHIPPED") == ()


def test_default_labels_name_every_state() -> None:
    for language in ("en", "es"):
        assert set(STATES) <= set(DEFAULT_LIFECYCLE.labels[language])


# Loading custom lifecycles.


def test_from_mapping_bar_tab() -> None:
    lifecycle = Lifecycle.from_mapping(bar_tab())

    assert lifecycle.name == "bar-tab"
    assert lifecycle.initial == "OPEN"
    assert lifecycle.states == ("OPEN", "PAID", "VOID")
    assert lifecycle.terminal == {"PAID", "VOID"}
    assert lifecycle.editable == {"OPEN"}
    assert lifecycle.rule("OPEN", "PAID") == TransitionRule("OPEN", "PAID", "pay")
    assert lifecycle.rule("OPEN", "VOID") == VOID_RULE
    assert lifecycle.rule("PAID", "OPEN") is None


def test_from_mapping_defaults() -> None:
    definition = bar_tab()
    del definition["name"]

    lifecycle = Lifecycle.from_mapping(definition)

    assert lifecycle.name == "custom"
    assert lifecycle.labels == {}


def test_from_mapping_source_list() -> None:
    definition = bar_tab(
        states=["OPEN", "SENT", "PAID", "VOID"],
        transitions=[
            {"from": "OPEN", "to": "SENT"},
            {"from": "SENT", "to": "PAID"},
            {"from": ["OPEN", "SENT"], "to": "VOID", "reason_required": True},
        ],
    )

    lifecycle = Lifecycle.from_mapping(definition)

    assert lifecycle.rule("OPEN", "VOID") == TransitionRule("OPEN", "VOID", None, True)
    assert lifecycle.rule("SENT", "VOID") == TransitionRule("SENT", "VOID", None, True)
    assert lifecycle.rule("OPEN", "SENT") == TransitionRule("OPEN", "SENT")


def test_from_mapping_explicit_editable() -> None:
    lifecycle = Lifecycle.from_mapping(bar_tab(editable=[]))

    assert lifecycle.editable == frozenset()


def test_from_mapping_copies_input() -> None:
    definition = bar_tab(labels={"en": {"OPEN": "Open"}})
    lifecycle = Lifecycle.from_mapping(definition)

    definition["states"].append("LATER")
    definition["labels"]["en"]["OPEN"] = "Changed"

    assert lifecycle.states == ("OPEN", "PAID", "VOID")
    assert lifecycle.labels == {"en": {"OPEN": "Open"}}


def load_mapping(definition: dict[str, Any], tmp_path: Path) -> Lifecycle:
    return Lifecycle.from_mapping(definition)


def load_json(definition: dict[str, Any], tmp_path: Path) -> Lifecycle:
    path = tmp_path / "bar-tab.json"
    path.write_text(json.dumps(definition), encoding="utf-8")
    return Lifecycle.from_file(path)


def load_toml(definition: dict[str, Any], tmp_path: Path) -> Lifecycle:
    # The TOML text is written by hand because the standard library has no
    # TOML writer. It describes the same lifecycle as ``bar_tab()``.
    assert definition == bar_tab()
    path = tmp_path / "bar-tab.toml"
    path.write_text(BAR_TAB_TOML, encoding="utf-8")
    return Lifecycle.from_file(str(path))


Loader = Callable[[dict[str, Any], Path], Lifecycle]

LOADERS = [
    pytest.param(load_mapping, id="mapping"),
    pytest.param(load_json, id="json"),
    pytest.param(load_toml, id="toml"),
]


@pytest.mark.parametrize("load", LOADERS)
def test_load_keeps_rules(load: Loader, tmp_path: Path) -> None:
    lifecycle = load(bar_tab(), tmp_path)

    assert lifecycle.rules == (TransitionRule("OPEN", "PAID", "pay"), VOID_RULE)
    assert lifecycle.to_mapping() == Lifecycle.from_mapping(bar_tab()).to_mapping()


@pytest.mark.parametrize("load", LOADERS)
def test_load_keeps_roles_and_reason(load: Loader, tmp_path: Path) -> None:
    rule = load(bar_tab(), tmp_path).rule("OPEN", "VOID")

    assert rule is not None
    assert rule.roles == {"manager"}
    assert rule.reason_required is True


def test_from_file_uppercase_suffix(tmp_path: Path) -> None:
    path = tmp_path / "BAR.JSON"
    path.write_text(json.dumps(bar_tab()), encoding="utf-8")

    assert Lifecycle.from_file(path).name == "bar-tab"


def test_from_file_default_lifecycle_json(tmp_path: Path) -> None:
    path = tmp_path / "restaurant.json"
    path.write_text(json.dumps(RESTAURANT_LIFECYCLE, ensure_ascii=False), encoding="utf-8")

    loaded = Lifecycle.from_file(path)

    assert loaded.to_mapping() == DEFAULT_LIFECYCLE.to_mapping()


BAD_FILES = [
    pytest.param("bar.yaml", "initial: OPEN\n", ".json or .toml", id="yaml-suffix"),
    pytest.param("bar", "{}", ".json or .toml", id="no-suffix"),
    pytest.param("bar.json", '{"initial": "OPEN",', "bar.json", id="broken-json"),
    pytest.param("bar.json", "", "bar.json", id="empty-json"),
    pytest.param("bar.toml", 'initial = "OPEN\n', "bar.toml", id="broken-toml"),
    pytest.param("bar.toml", "initial = = 1\n", "bar.toml", id="toml-syntax"),
    pytest.param("bar.json", '["OPEN"]', "must be a mapping", id="json-list"),
]


@pytest.mark.parametrize(("name", "text", "fragment"), BAD_FILES)
def test_from_file_rejects(tmp_path: Path, name: str, text: str, fragment: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    with pytest.raises(LifecycleError) as caught:
        Lifecycle.from_file(path)

    assert fragment in str(caught.value)
    assert caught.value.state is None


def test_from_file_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bar.json"
    path.write_bytes(b'{"name": "\xff"}')

    with pytest.raises(LifecycleError, match=r"bar\.json"):
        Lifecycle.from_file(path)


def test_from_file_missing(tmp_path: Path) -> None:
    with pytest.raises(LifecycleError, match=r"missing\.toml"):
        Lifecycle.from_file(tmp_path / "missing.toml")


def test_from_file_keeps_cause(tmp_path: Path) -> None:
    path = tmp_path / "bar.json"
    path.write_text("{", encoding="utf-8")

    with pytest.raises(LifecycleError) as caught:
        Lifecycle.from_file(path)

    assert isinstance(caught.value.__cause__, json.JSONDecodeError)


def test_from_file_validates(tmp_path: Path) -> None:
    path = tmp_path / "bar.json"
    path.write_text(json.dumps(bar_tab(terminal=["PAID"])), encoding="utf-8")

    with pytest.raises(LifecycleError) as caught:
        Lifecycle.from_file(path)

    assert caught.value.state == "VOID"


# Round trips.


@pytest.mark.parametrize(
    "definition",
    [
        pytest.param(RESTAURANT_LIFECYCLE, id="default"),
        pytest.param(bar_tab(), id="bar-tab"),
        pytest.param(bar_tab(editable=[], labels={"fr": {"void": "Annuler"}}), id="no-editable"),
        pytest.param(
            with_transitions(
                {"from": "OPEN", "to": "PAID"},
                {"from": "OPEN", "to": "VOID", "name": ""},
                transitions=[],
            ),
            id="empty-name",
        ),
    ],
)
def test_round_trip(definition: dict[str, Any]) -> None:
    first = Lifecycle.from_mapping(definition)

    second = Lifecycle.from_mapping(first.to_mapping())

    assert second.to_mapping() == first.to_mapping()
    assert second.rules == first.rules
    assert second.editable == first.editable
    assert second.terminal == first.terminal
    assert second.labels == first.labels
    assert second.name == first.name


def test_round_trip_json_text() -> None:
    mapping = DEFAULT_LIFECYCLE.to_mapping()

    reloaded = Lifecycle.from_mapping(json.loads(json.dumps(mapping)))

    assert reloaded.to_mapping() == mapping


def test_to_mapping_is_a_copy() -> None:
    mapping = DEFAULT_LIFECYCLE.to_mapping()

    mapping["labels"]["en"]["PENDING"] = "Changed"
    mapping["states"].append("LATER")

    assert DEFAULT_LIFECYCLE.labels["en"]["PENDING"] == "Pending"
    assert "LATER" not in DEFAULT_LIFECYCLE.states


# Validation errors that name a state. Each case gives the definition, the
# state that ``LifecycleError.state`` must name, and a fragment of the message.

STATE_ERRORS = [
    pytest.param(
        with_transitions({"from": "OPEN", "to": "GONE"}),
        "GONE",
        "unknown state GONE",
        id="unknown-target",
    ),
    pytest.param(
        with_transitions({"from": "GHOST", "to": "PAID"}),
        "GHOST",
        "unknown state GHOST",
        id="unknown-source",
    ),
    pytest.param(
        with_transitions({"from": "LOST", "to": "PAID"}, states=["OPEN", "PAID", "VOID", "LOST"]),
        "LOST",
        "unreachable",
        id="unreachable",
    ),
    pytest.param(
        with_transitions({"from": "PAID", "to": "OPEN"}),
        "PAID",
        "terminal state PAID has an outgoing transition",
        id="terminal-outgoing",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "HELD"}, states=["OPEN", "HELD", "PAID", "VOID"]),
        "HELD",
        "no outgoing transition and is not terminal",
        id="dead-end",
    ),
    pytest.param(
        with_transitions(
            {"from": "OPEN", "to": "LOOP_A"},
            {"from": "LOOP_A", "to": "LOOP_B"},
            {"from": "LOOP_B", "to": "LOOP_A"},
            states=["OPEN", "LOOP_A", "LOOP_B", "PAID", "VOID"],
        ),
        "LOOP_A",
        "no terminal state can be reached from state LOOP_A",
        id="no-way-out",
    ),
    pytest.param(
        bar_tab(states=["OPEN", "PAID", "VOID", "PAID"]),
        "PAID",
        "declared twice",
        id="duplicate-state",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "PAID", "name": "settle"}),
        "OPEN",
        "OPEN -> PAID is declared twice",
        id="duplicate-transition",
    ),
    pytest.param(
        with_transitions({"from": ["OPEN", "OPEN"], "to": "PAID"}, transitions=[]),
        "OPEN",
        "OPEN -> PAID is declared twice",
        id="duplicate-source",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "OPEN"}),
        "OPEN",
        "does not change the state",
        id="self-transition",
    ),
    pytest.param(
        bar_tab(initial="START"),
        "START",
        "initial state START is not in 'states'",
        id="unknown-initial",
    ),
    pytest.param(
        bar_tab(initial="PAID"),
        "PAID",
        "initial state PAID cannot be terminal",
        id="terminal-initial",
    ),
    pytest.param(
        bar_tab(terminal=["PAID", "VOID", "REFUNDED"]),
        "REFUNDED",
        "terminal state REFUNDED is not in 'states'",
        id="unknown-terminal",
    ),
    pytest.param(
        bar_tab(editable=["OPEN", "PAID"]),
        "PAID",
        "editable state PAID",
        id="editable-terminal",
    ),
    pytest.param(
        bar_tab(editable=["SENT"]),
        "SENT",
        "editable state SENT",
        id="editable-unknown",
    ),
    pytest.param(
        bar_tab(labels={"en": {"OPEN": "Open", "CLOSED": "Closed"}}),
        "CLOSED",
        "names no state or transition",
        id="label-unknown",
    ),
    pytest.param(
        bar_tab(labels={"en": {"refund": "Refund"}}),
        "refund",
        "names no state or transition",
        id="label-unknown-transition",
    ),
]


@pytest.mark.parametrize(("definition", "state", "fragment"), STATE_ERRORS)
def test_validation_names_state(definition: dict[str, Any], state: str, fragment: str) -> None:
    with pytest.raises(LifecycleError) as caught:
        Lifecycle.from_mapping(definition)

    assert caught.value.state == state
    assert state in str(caught.value)
    assert fragment in str(caught.value)


BAD_NAMES = ["", "1ST", "_OPEN", "has space", "bad/slash", "new\nline", "A" * 65, "ÜBER", "a.b"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[f"bad-name-{i}" for i in range(len(BAD_NAMES))])
def test_bad_state_name(name: str) -> None:
    with pytest.raises(LifecycleError) as caught:
        Lifecycle.from_mapping(bar_tab(states=["OPEN", "PAID", "VOID", name]))

    # The message quotes the name with repr() so that blanks and line breaks show.
    assert caught.value.state == name
    assert f"state name {name!r} is invalid" in str(caught.value)
    assert "use a letter followed by up to 63 letters" in str(caught.value)


@pytest.mark.parametrize("name", ["A", "a" * 64, "Open-2", "on_hold"])
def test_good_state_names(name: str) -> None:
    definition = bar_tab(
        states=["OPEN", name, "PAID", "VOID"],
        transitions=[{"from": "OPEN", "to": name}, {"from": name, "to": "PAID"}],
    )
    definition["transitions"].append({"from": "OPEN", "to": "VOID"})

    assert name in Lifecycle.from_mapping(definition).states


# Validation errors of the definition's shape, which name no state.

SHAPE_ERRORS = [
    pytest.param(["OPEN"], "must be a mapping", id="not-a-mapping"),
    pytest.param(bar_tab(terminal=[]), "no terminal state", id="no-terminal"),
    pytest.param(bar_tab(colour="red"), "colour", id="unknown-key"),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "PAID", "guard": "paid"}, transitions=[]),
        "guard",
        id="unknown-transition-key",
    ),
    pytest.param({"states": [], "terminal": [], "transitions": []}, "'initial'", id="no-initial"),
    pytest.param(
        {"initial": "OPEN", "states": ["OPEN"], "terminal": ["OPEN"]},
        "'transitions'",
        id="no-transitions",
    ),
    pytest.param(bar_tab(name=["bar"]), "'name' must be a string", id="name-list"),
    pytest.param(bar_tab(initial=5), "'initial' must be a string", id="initial-int"),
    pytest.param(bar_tab(states={"OPEN": 1}), "'states' must be a list", id="states-dict"),
    pytest.param(bar_tab(states=["OPEN", 5]), "'states' must be a list", id="states-int"),
    pytest.param(bar_tab(terminal=None), "'terminal' must be a list", id="terminal-none"),
    pytest.param(bar_tab(editable=[True]), "'editable' must be a list", id="editable-bool"),
    pytest.param(bar_tab(transitions=5), "'transitions' must be a list", id="transitions-int"),
    pytest.param(bar_tab(transitions=None), "'transitions' must be a list", id="transitions-none"),
    pytest.param(
        bar_tab(transitions={"from": "OPEN", "to": "PAID"}),
        "'transitions' must be a list",
        id="transitions-dict",
    ),
    pytest.param(
        with_transitions("OPEN -> PAID", transitions=[]),
        "transitions[0] must be a mapping",
        id="transition-str",
    ),
    pytest.param(
        with_transitions({"from": "OPEN"}),
        "transitions[2] needs both 'from' and 'to'",
        id="transition-no-to",
    ),
    pytest.param(
        with_transitions({"from": 1, "to": "PAID"}),
        "transitions[2].from",
        id="from-int",
    ),
    pytest.param(
        with_transitions({"from": [], "to": "PAID"}),
        "transitions[2].from must name at least one state",
        id="from-empty",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": ["PAID"]}),
        "transitions[2].to",
        id="to-list",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "PAID", "name": 7}),
        "transitions[2].name must be a string",
        id="name-int",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "PAID", "reason_required": "yes"}),
        "transitions[2].reason_required must be true or false",
        id="reason-str",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "PAID", "roles": [""]}),
        "transitions[2].roles must not contain empty names",
        id="role-empty",
    ),
    pytest.param(
        with_transitions({"from": "OPEN", "to": "PAID", "roles": [1]}),
        "transitions[2].roles",
        id="role-int",
    ),
    pytest.param(bar_tab(labels=["en"]), "'labels' must map", id="labels-list"),
    pytest.param(bar_tab(labels={"en": ["OPEN"]}), "labels['en']", id="labels-en-list"),
    pytest.param(bar_tab(labels={"en": {"OPEN": 1}}), "labels['en']", id="label-int"),
]


@pytest.mark.parametrize(("definition", "fragment"), SHAPE_ERRORS)
def test_validation_shape(definition: Any, fragment: str) -> None:
    with pytest.raises(LifecycleError) as caught:
        Lifecycle.from_mapping(definition)

    assert fragment in str(caught.value)
    assert caught.value.state is None


def test_constructor_validates() -> None:
    with pytest.raises(LifecycleError) as caught:
        Lifecycle(
            name="direct",
            initial="OPEN",
            states=["OPEN", "PAID"],
            terminal=["PAID"],
            transitions=[TransitionRule("OPEN", "SHUT")],
        )

    assert caught.value.state == "SHUT"


def test_lifecycle_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="no terminal state"):
        Lifecycle.from_mapping(bar_tab(terminal=[]))


# Mermaid export.


def test_mermaid_exact() -> None:
    definition = with_transitions(
        {"from": "OPEN", "to": "SENT"},
        {"from": "SENT", "to": "PAID", "roles": ["owner", "cashier"]},
        states=["OPEN", "SENT", "PAID", "VOID"],
    )

    text = Lifecycle.from_mapping(definition).to_mermaid()

    assert text.splitlines() == [
        "stateDiagram-v2",
        "    [*] --> OPEN",
        "    OPEN --> PAID : pay",
        "    OPEN --> VOID : void (reason required, role manager)",
        "    OPEN --> SENT",
        "    SENT --> PAID : (roles cashier or owner)",
        "    PAID --> [*]",
        "    VOID --> [*]",
    ]
    assert text.endswith("\n")


def test_mermaid_default_has_every_rule() -> None:
    lines = DEFAULT_LIFECYCLE.to_mermaid().splitlines()
    arrows = {tuple(line.split(" : ")[0].strip().split(" --> ")) for line in lines[1:]}

    assert lines[0] == "stateDiagram-v2"
    assert ("[*]", "PENDING") in arrows
    for pair in DEFAULT_RULES:
        assert pair in arrows
    for state in TERMINAL:
        assert (state, "[*]") in arrows
    assert len(lines) == 1 + 1 + len(DEFAULT_RULES) + len(TERMINAL)


def test_mermaid_marks_reason() -> None:
    lines = DEFAULT_LIFECYCLE.to_mermaid().splitlines()

    assert "    PREPARING --> CANCELLED : cancel (reason required)" in lines
    assert "    READY --> PREPARING : recall" in lines


def test_mermaid_labels_avoid_separators() -> None:
    """Mermaid ends a label at ':' and breaks it at ';' or '#'."""
    for line in DEFAULT_LIFECYCLE.to_mermaid().splitlines()[1:]:
        _, _, label = line.partition(" : ")
        assert not set(label) & {":", ";", "#"}, line


def test_repr() -> None:
    assert repr(DEFAULT_LIFECYCLE) == "<Lifecycle 'restaurant': 7 states, 9 transitions>"


# Random lifecycles, valid by construction. Every state gets a parent among
# the active states listed before it, so all states are reachable. Every active
# state gets an edge to a terminal state, so none is a dead end. Terminal
# states get no outgoing edges.

STATE_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,12}", fullmatch=True)
ROLE_NAMES = st.sampled_from(["cook", "cashier", "manager", "runner"])


@st.composite
def lifecycles(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(STATE_NAMES, min_size=2, max_size=9, unique=True))
    terminal_count = draw(st.integers(min_value=1, max_value=len(names) - 1))
    active, terminal = names[:-terminal_count], names[-terminal_count:]

    edges: set[tuple[str, str]] = set()
    for index, state in enumerate(names[1:], start=1):
        parents = active[: min(index, len(active))]
        edges.add((draw(st.sampled_from(parents)), state))
    for state in active:
        edges.add((state, draw(st.sampled_from(terminal))))
    extra = draw(st.lists(st.tuples(st.sampled_from(active), st.sampled_from(names)), max_size=8))
    edges.update((source, target) for source, target in extra if source != target)

    transitions = []
    for source, target in sorted(edges):
        entry: dict[str, Any] = {"from": source, "to": target}
        name = draw(st.none() | st.sampled_from(["go", "back", "finish", ""]))
        if name is not None:
            entry["name"] = name
        if draw(st.booleans()):
            entry["reason_required"] = draw(st.booleans())
        roles = draw(st.lists(ROLE_NAMES, max_size=2, unique=True))
        if roles:
            entry["roles"] = roles
        transitions.append(entry)

    definition: dict[str, Any] = {
        "name": draw(st.text(max_size=10)),
        "initial": active[0],
        "states": names,
        "terminal": terminal,
        "transitions": transitions,
    }
    if draw(st.booleans()):
        definition["editable"] = draw(st.lists(st.sampled_from(active), unique=True))
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(names), unique=True))
        definition["labels"] = {"en": {key: key.lower() for key in keys}}
    return definition


@given(lifecycles())
def test_random_lifecycle_accepted(definition: dict[str, Any]) -> None:
    lifecycle = Lifecycle.from_mapping(definition)

    expected = {(entry["from"], entry["to"]) for entry in definition["transitions"]}
    assert {(rule.source, rule.target) for rule in lifecycle.rules} == expected
    assert lifecycle.terminal == set(definition["terminal"])
    assert lifecycle.initial == definition["initial"]


@given(lifecycles())
def test_random_lifecycle_round_trip(definition: dict[str, Any]) -> None:
    lifecycle = Lifecycle.from_mapping(definition)

    reloaded = Lifecycle.from_mapping(json.loads(json.dumps(lifecycle.to_mapping())))

    assert reloaded.to_mapping() == lifecycle.to_mapping()
    assert reloaded.rules == lifecycle.rules
    assert reloaded.editable == lifecycle.editable


@given(lifecycles(), STATE_NAMES)
def test_random_orphan_rejected(definition: dict[str, Any], orphan: str) -> None:
    assume(orphan not in definition["states"])
    definition["states"] = [*definition["states"], orphan]
    definition["terminal"] = [*definition["terminal"], orphan]

    with pytest.raises(LifecycleError) as caught:
        Lifecycle.from_mapping(definition)

    assert caught.value.state == orphan
