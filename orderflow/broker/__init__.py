"""Broker adapters, chosen by URL scheme.

``memory://`` delivers inside one process. ``redis://`` (and ``rediss://``)
imports redis-py only when asked for, and needs the ``orderflow[redis]``
extra.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Broker, BrokerHealth, Publication, Subscription
from .memory import MemoryBroker

__all__ = [
    "Broker",
    "BrokerHealth",
    "MemoryBroker",
    "Publication",
    "Subscription",
    "broker_from_url",
]

DEFAULT_BROKER_URL = "memory://"


def broker_from_url(url: str) -> Broker:
    """Build (but do not start) the broker adapter for ``url``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        try:
            from .redis import RedisBroker
        except ImportError as exc:
            raise ConfigurationError(
                f"Redis support needs redis-py ({exc}); install it with "
                "pip install 'orderflow[redis]'"
            ) from exc
        return RedisBroker.from_url(url)
    raise ConfigurationError(
        f"unsupported broker URL scheme {scheme!r}; use memory:// or redis://host:port/0"
    )
