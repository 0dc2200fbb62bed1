"""Storage adapters, chosen by URL scheme.

``sqlite:`` needs nothing beyond the standard library and sqlite-utils.
``postgresql:`` imports psycopg only when asked for, and needs the
``orderflow[postgres]`` extra.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .base import Change, LockedLocation, LockedOrder, Storage, StoredResult, WriteTransaction

__all__ = [
    "Change",
    "LockedLocation",
    "LockedOrder",
    "Storage",
    "StoredResult",
    "WriteTransaction",
    "storage_from_url",
]

DEFAULT_DATABASE_URL = "sqlite:///orderflow.db"


def storage_from_url(url: str) -> Storage:
    """Build (but do not open) the storage adapter for ``url``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SQLiteStorage

        return SQLiteStorage.from_url(url)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStorage
        except ImportError as exc:
            raise ConfigurationError(
                f"PostgreSQL support needs psycopg ({exc}); install it with "
                "pip install 'orderflow[postgres]'"
            ) from exc
        return PostgresStorage.from_url(url)
    raise ConfigurationError(
        f"unsupported database URL {redact_url(url)!r}; use sqlite:///path.db or "
        "postgresql://user@host/dbname"
    )


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
