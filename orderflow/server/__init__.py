"""The HTTP and WebSocket server behind ``orderflow serve``."""

from __future__ import annotations

from .app import Server
from .config import ServerConfig, TokenInfo

__all__ = ["Server", "ServerConfig", "TokenInfo"]
