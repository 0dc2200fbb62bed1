"""Order lifecycles declared as data.

A lifecycle is a mapping (or a JSON or TOML file of the same shape)::

    {
        "name": "restaurant",
        "initial": "PENDING",
        "states": ["PENDING", "CONFIRMED", ...],
        "terminal": ["COMPLETED", ...],
        "transitions": [
            {"from": "PENDING", "to": "CONFIRMED", "name": "confirm"},
            {"from": ["PENDING", "CONFIRMED"], "to": "CANCELLED",
             "name": "cancel", "reason_required": true, "roles": ["manager"]},
        ],
        "editable": ["PENDING", "CONFIRMED"],           # optional
        "labels": {"es": {"PENDING": "Pendiente"}},      # optional
    }

``Lifecycle.from_mapping`` validates the whole definition before anything
uses it, and each error names the state at fault. ``editable`` lists the
states in which items and meta may change (default: every active state).
``labels`` gives display names of states and transition names per language,
for screens that staff read.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LifecycleError

__all__ = ["DEFAULT_LIFECYCLE", "RESTAURANT_LIFECYCLE", "Lifecycle", "TransitionRule"]

# The default restaurant lifecycle. Orders start PENDING; COMPLETED,
# CANCELLED and REJECTED end them. READY -> PREPARING recalls an order to
# the kitchen. Cancelling needs a reason, so the pass can see why food stopped.
RESTAURANT_LIFECYCLE: dict[str, Any] = {
    "name": "restaurant",
    "initial": "PENDING",
    "states": [
        "PENDING",
        "CONFIRMED",
        "PREPARING",
        "READY",
        "COMPLETED",
        "CANCELLED",
        "REJECTED",
    ],
    "terminal": ["COMPLETED", "CANCELLED", "REJECTED"],
    "transitions": [
        {"from": "PENDING", "to": "CONFIRMED", "name": "confirm"},
        {"from": "CONFIRMED", "to": "PREPARING", "name": "start"},
        {"from": "PREPARING", "to": "READY", "name": "ready"},
        {"from": "READY", "to": "COMPLETED", "name": "complete"},
        {"from": "READY", "to": "PREPARING", "name": "recall"},
        {
            "from": ["PENDING", "CONFIRMED", "PREPARING"],
            "to": "CANCELLED",
            "name": "cancel",
            "reason_required": True,
        },
        {"from": "PENDING", "to": "REJECTED", "name": "reject"},
    ],
    "labels": {
        "en": {
            "PENDING": "Pending",
            "CONFIRMED": "Confirmed",
            "PREPARING": "Preparing",
            "READY": "Ready",
            "COMPLETED": "Completed",
            "CANCELLED": "Cancelled",
            "REJECTED": "Rejected",
            "confirm": "Confirm",
            "start": "Start",
            "ready": "Ready",
            "complete": "Hand over",
            "recall": "Recall",
            "cancel": "Cancel",
            "reject": "Reject",
        },
        "es": {
            "PENDING": "Pendiente",
            "CONFIRMED": "Confirmado",
            "PREPARING": "En preparación",
            "READY": "Listo",
            "COMPLETED": "Entregado",
            "CANCELLED": "Cancelado",
            "REJECTED": "Rechazado",
            "confirm": "Confirmar",
            "start": "Preparar",
            "ready": "Listo",
            "complete": "Entregar",
            "recall": "Devolver a cocina",
            "cancel": "Cancelar",
            "reject": "Rechazar",
        },
    },
}

_STATE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}\Z")
_KNOWN_KEYS = {"name", "initial", "states", "terminal", "transitions", "editable", "labels"}
_TRANSITION_KEYS = {"from", "to", "name", "reason_required", "roles"}


@dataclass(frozen=True, slots=True)
class TransitionRule:
    """One allowed move from ``source`` to ``target``.

    ``roles`` is empty when any caller may make the move; otherwise the caller
    needs at least one of them (checked only when the caller's roles are known).
    """

    source: str
    target: str
    name: str | None = None
    reason_required: bool = False
    roles: frozenset[str] = frozenset()


class Lifecycle:
    """A validated order lifecycle: states, transitions and terminal states."""

    __slots__ = (
        "_allowed",
        "_rules",
        "editable",
        "initial",
        "labels",
        "name",
        "states",
        "terminal",
    )

    def __init__(
        self,
        *,
        name: str,
        initial: str,
        states: Iterable[str],
        terminal: Iterable[str],
        transitions: Iterable[TransitionRule],
        editable: Iterable[str] | None = None,
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.name = name
        self.initial = initial
        self.states: tuple[str, ...] = tuple(states)
        self.terminal: frozenset[str] = frozenset(terminal)
        self._rules: dict[tuple[str, str], TransitionRule] = {}
        for rule in transitions:
            key = (rule.source, rule.target)
            if key in self._rules:
                raise LifecycleError(
                    f"transition {rule.source} -> {rule.target} is declared twice",
                    state=rule.source,
                )
            self._rules[key] = rule
        if editable is None:
            editable = [state for state in self.states if state not in self.terminal]
        self.editable: frozenset[str] = frozenset(editable)
        self.labels: dict[str, dict[str, str]] = {
            language: dict(names) for language, names in (labels or {}).items()
        }
        self._allowed: dict[str, tuple[str, ...]] = {
            state: tuple(t for (s, t) in self._rules if s == state) for state in self.states
        }
        self._validate()

    # Queries used on every transition: plain dictionary lookups.

    def rule(self, source: str, target: str) -> TransitionRule | None:
        """Return the rule for ``source -> target``, or None when it is not allowed."""
        return self._rules.get((source, target))

    def allowed_targets(self, state: str) -> tuple[str, ...]:
        return self._allowed.get(state, ())

    def is_terminal(self, state: str) -> bool:
        return state in self.terminal

    def is_active(self, state: str) -> bool:
        return state not in self.terminal

    @property
    def rules(self) -> tuple[TransitionRule, ...]:
        return tuple(self._rules.values())

    # Validation.

    def _validate(self) -> None:
        known = set(self.states)
        if len(known) != len(self.states):
            duplicate = next(s for s in self.states if self.states.count(s) > 1)
            raise LifecycleError(f"state {duplicate} is declared twice", state=duplicate)
        for state in self.states:
            if not isinstance(state, str) or not _STATE_NAME.match(state):
                raise LifecycleError(
                    f"state name {state!r} is invalid; use a letter followed by up to "
                    "63 letters, digits, '_' or '-'",
                    state=str(state),
                )
        if self.initial not in known:
            raise LifecycleError(
                f"initial state {self.initial} is not in 'states'", state=self.initial
            )
        if not self.terminal:
            raise LifecycleError(
                "the lifecycle has no terminal state; list at least one in 'terminal'"
            )
        for state in sorted(self.terminal - known):
            raise LifecycleError(f"terminal state {state} is not in 'states'", state=state)
        if self.initial in self.terminal:
            raise LifecycleError(
                f"initial state {self.initial} cannot be terminal", state=self.initial
            )
        for source, target in self._rules:
            for state in (source, target):
                if state not in known:
                    raise LifecycleError(
                        f"transition {source} -> {target} uses unknown state {state}; "
                        "add it to 'states' or fix the name",
                        state=state,
                    )
            if source == target:
                raise LifecycleError(
                    f"transition {source} -> {target} does not change the state", state=source
                )
            if source in self.terminal:
                raise LifecycleError(
                    f"terminal state {source} has an outgoing transition to {target}",
                    state=source,
                )
        for state in self.states:
            if state not in self.terminal and not self._allowed[state]:
                raise LifecycleError(
                    f"state {state} has no outgoing transition and is not terminal; "
                    "add a transition or list it in 'terminal'",
                    state=state,
                )
        reachable = self._reachable_from(self.initial)
        for state in self.states:
            if state not in reachable:
                raise LifecycleError(
                    f"state {state} is unreachable from the initial state {self.initial}",
                    state=state,
                )
        for state in self.states:
            if not self._reachable_from(state) & self.terminal:
                raise LifecycleError(
                    f"no terminal state can be reached from state {state}", state=state
                )
        for state in sorted(self.editable):
            if state not in known or state in self.terminal:
                raise LifecycleError(
                    f"editable state {state} must be a declared, non-terminal state",
                    state=state,
                )
        names = {rule.name for rule in self._rules.values() if rule.name}
        for language, labels in self.labels.items():
            for key in labels:
                if key not in known and key not in names:
                    raise LifecycleError(
                        f"label {key!r} for language {language!r} names no state or transition",
                        state=key,
                    )

    def _reachable_from(self, start: str) -> set[str]:
        seen = {start}
        pending = [start]
        while pending:
            for target in self._allowed.get(pending.pop(), ()):
                if target not in seen:
                    seen.add(target)
                    pending.append(target)
        return seen

    # Loading and export.

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Lifecycle:
        """Build and validate a lifecycle from its mapping form."""
        if not isinstance(data, Mapping):
            raise LifecycleError("a lifecycle definition must be a mapping")
        unknown = set(data) - _KNOWN_KEYS
        if unknown:
            raise LifecycleError(
                f"unknown lifecycle key(s): {', '.join(sorted(unknown))}; "
                f"known keys: {', '.join(sorted(_KNOWN_KEYS))}"
            )
        for key in ("initial", "states", "terminal", "transitions"):
            if key not in data:
                raise LifecycleError(f"the lifecycle definition is missing {key!r}")
        if not isinstance(data["transitions"], list):
            raise LifecycleError("'transitions' must be a list of mappings with 'from' and 'to'")
        rules = [_parse_rule(index, entry) for index, entry in enumerate(data["transitions"])]
        return cls(
            name=_expect_str(data.get("name", "custom"), "name"),
            initial=_expect_str(data["initial"], "initial"),
            states=_expect_str_list(data["states"], "states"),
            terminal=_expect_str_list(data["terminal"], "terminal"),
            transitions=[rule for group in rules for rule in group],
            editable=(
                _expect_str_list(data["editable"], "editable") if "editable" in data else None
            ),
            labels=_parse_labels(data.get("labels", {})),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Lifecycle:
        """Load a lifecycle from a ``.json`` or ``.toml`` file."""
        path = Path(path)
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                data = json.loads(path.read_text(encoding="utf-8"))
            elif suffix == ".toml":
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            else:
                raise LifecycleError(f"cannot load lifecycle {path}: use a .json or .toml file")
        except (OSError, ValueError) as exc:
            if isinstance(exc, LifecycleError):
                raise
            raise LifecycleError(f"cannot load lifecycle {path}: {exc}") from exc
        return cls.from_mapping(data)

    def to_mapping(self) -> dict[str, Any]:
        """Return the mapping form, which ``from_mapping`` reads back."""
        transitions: list[dict[str, Any]] = []
        for rule in self._rules.values():
            entry: dict[str, Any] = {"from": rule.source, "to": rule.target}
            if rule.name is not None:
                entry["name"] = rule.name
            if rule.reason_required:
                entry["reason_required"] = True
            if rule.roles:
                entry["roles"] = sorted(rule.roles)
            transitions.append(entry)
        return {
            "name": self.name,
            "initial": self.initial,
            "states": list(self.states),
            "terminal": [state for state in self.states if state in self.terminal],
            "transitions": transitions,
            "editable": [state for state in self.states if state in self.editable],
            "labels": {language: dict(labels) for language, labels in self.labels.items()},
        }

    def to_mermaid(self) -> str:
        """Return the lifecycle as a Mermaid ``stateDiagram-v2``.

        Labels avoid ``:``, ``;`` and ``#``, which end or break a transition
        label in Mermaid's state diagram grammar.
        """
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial}"]
        for rule in self._rules.values():
            details = []
            if rule.reason_required:
                details.append("reason required")
            if rule.roles:
                roles = sorted(rule.roles)
                details.append(("role " if len(roles) == 1 else "roles ") + " or ".join(roles))
            label = rule.name or ""
            if details:
                label = f"{label} ({', '.join(details)})".strip()
            suffix = f" : {label}" if label else ""
            lines.append(f"    {rule.source} --> {rule.target}{suffix}")
        for state in self.states:
            if state in self.terminal:
                lines.append(f"    {state} --> [*]")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        return (
            f"<Lifecycle {self.name!r}: {len(self.states)} states, {len(self._rules)} transitions>"
        )


def _expect_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise LifecycleError(f"{key!r} must be a string, not {type(value).__name__}")
    return value


def _expect_str_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise LifecycleError(f"{key!r} must be a list of strings")
    return list(value)


def _parse_rule(index: int, entry: Any) -> list[TransitionRule]:
    where = f"transitions[{index}]"
    if not isinstance(entry, Mapping):
        raise LifecycleError(f"{where} must be a mapping with 'from' and 'to'")
    unknown = set(entry) - _TRANSITION_KEYS
    if unknown:
        raise LifecycleError(
            f"{where} has unknown key(s): {', '.join(sorted(unknown))}; "
            f"known keys: {', '.join(sorted(_TRANSITION_KEYS))}"
        )
    if "from" not in entry or "to" not in entry:
        raise LifecycleError(f"{where} needs both 'from' and 'to'")
    sources = _expect_str_list(entry["from"], f"{where}.from")
    if not sources:
        raise LifecycleError(f"{where}.from must name at least one state")
    target = _expect_str(entry["to"], f"{where}.to")
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise LifecycleError(f"{where}.name must be a string")
    reason_required = entry.get("reason_required", False)
    if not isinstance(reason_required, bool):
        raise LifecycleError(f"{where}.reason_required must be true or false")
    roles = _expect_str_list(entry.get("roles", []), f"{where}.roles")
    if any(not role for role in roles):
        raise LifecycleError(f"{where}.roles must not contain empty names")
    return [
        TransitionRule(source, target, name, reason_required, frozenset(roles))
        for source in sources
    ]


def _parse_labels(value: Any) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        raise LifecycleError("'labels' must map a language code to a mapping of names")
    labels: dict[str, dict[str, str]] = {}
    for language, names in value.items():
        if not isinstance(names, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in names.items()
        ):
            raise LifecycleError(f"labels[{language!r}] must map names to strings")
        labels[str(language)] = dict(names)
    return labels


DEFAULT_LIFECYCLE = Lifecycle.from_mapping(RESTAURANT_LIFECYCLE)
