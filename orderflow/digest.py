"""The digest of a set of active orders.

Each active order contributes the 64-bit FNV-1a hash of the UTF-8 bytes of
``id + "\\n" + version`` (version in decimal). The digest is the sum of those
hashes modulo 2**64, written as 16 lowercase hex digits. Because it is a sum,
a screen or a feed can keep it up to date one order at a time: subtract the
old contribution of a changed order and add the new one.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["EMPTY_DIGEST", "contribution", "digest_of", "fnv1a_64", "format_digest"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF

EMPTY_DIGEST = "0000000000000000"


def fnv1a_64(data: bytes) -> int:
    """Return the 64-bit FNV-1a hash of ``data``."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & _MASK
    return value


def contribution(order_id: str, version: int) -> int:
    """Return what one active order adds to the digest sum."""
    return fnv1a_64(f"{order_id}\n{version}".encode())


def format_digest(total: int) -> str:
    return format(total & _MASK, "016x")


def digest_of(orders: Iterable[tuple[str, int]]) -> str:
    """Return the digest of ``(order id, version)`` pairs of active orders."""
    total = 0
    for order_id, version in orders:
        total += contribution(order_id, version)
    return format_digest(total)
