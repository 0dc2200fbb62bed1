"""orderflow: an embedded engine for restaurant order flow.

``Engine`` serves blocking code and ``AsyncEngine`` async code on asyncio or
trio; both are opened from URLs (``sqlite:///orderflow.db``,
``postgresql://...``, ``memory://``, ``redis://...``). Every error orderflow
raises on purpose derives from ``OrderflowError``.
"""

from __future__ import annotations

from .aio import AsyncEngine, EventStream
from .engine import Engine, Health, Transaction, new_order_id
from .errors import *  # noqa: F403
from .errors import __all__ as _error_names
from .lifecycle import DEFAULT_LIFECYCLE, Lifecycle, TransitionRule
from .models import Event, EventPage, Item, LogPosition, Order, Snapshot

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_LIFECYCLE",
    "AsyncEngine",
    "Engine",
    "Event",
    "EventPage",
    "EventStream",
    "Health",
    "Item",
    "Lifecycle",
    "LogPosition",
    "Order",
    "Snapshot",
    "Transaction",
    "TransitionRule",
    "__version__",
    "new_order_id",
    *_error_names,
]
