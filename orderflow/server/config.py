"""Server settings: the address, every limit and every timeout, with their defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..core import validate_location
from ..errors import ConfigurationError, InvalidRequest
from ..feed import FeedOptions

__all__ = ["ServerConfig", "TokenInfo"]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """The holder of a bearer token: the actor recorded on its changes, and its roles."""

    actor: str
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Settings of ``orderflow serve``. Sizes are in bytes, times in seconds.

    ``header_timeout`` bounds how long a client may take to send a request
    head (or a WebSocket handshake), so a client that sends one byte a second
    is dropped. ``idle_timeout`` closes keep-alive connections with no request.
    ``send_timeout`` drops a client that stops reading. ``tokens`` maps bearer
    tokens to their holders; when it is empty, no authentication is required.
    ``locations``, when set, lists the only locations the server serves, so a
    request for any other name gets 404 instead of creating a new event log.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1 * MIB
    max_header_bytes: int = 16 * KIB
    max_header_count: int = 100
    max_ws_message_bytes: int = 64 * KIB
    max_connections: int = 1000
    max_replay: int = 1000
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    send_timeout: float = 10.0
    heartbeat_interval: float = 10.0
    shutdown_grace: float = 5.0
    feed: FeedOptions = field(default_factory=FeedOptions)
    tokens: Mapping[str, TokenInfo] = field(default_factory=dict)
    locations: frozenset[str] | None = None

    def __post_init__(self) -> None:
        positive = {
            "max_body_bytes": self.max_body_bytes,
            "max_header_bytes": self.max_header_bytes,
            "max_header_count": self.max_header_count,
            "max_ws_message_bytes": self.max_ws_message_bytes,
            "max_connections": self.max_connections,
            "header_timeout": self.header_timeout,
            "body_timeout": self.body_timeout,
            "idle_timeout": self.idle_timeout,
            "send_timeout": self.send_timeout,
            "heartbeat_interval": self.heartbeat_interval,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigurationError(f"{name} must be greater than 0, not {value}")
        if self.max_replay < 0:
            raise ConfigurationError(f"max_replay must be at least 0, not {self.max_replay}")
        if self.shutdown_grace < 0:
            raise ConfigurationError(
                f"shutdown_grace must be at least 0, not {self.shutdown_grace}"
            )
        for location in self.locations or ():
            try:
                validate_location(location)
            except InvalidRequest as exc:
                raise ConfigurationError(exc.detail) from None
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"port must be from 0 to 65535, not {self.port}")
