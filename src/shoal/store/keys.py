"""Key and value rules every store backend enforces the same way."""

from __future__ import annotations

from shoal.errors import InvalidArgument


def prefix_range(prefix: str) -> tuple[bytes, bytes | None]:
    """[lo, hi) byte range of every key starting with prefix (hi None: no upper bound)."""
    lo = prefix.encode()
    hi = bytearray(lo)
    while hi and hi[-1] == 0xFF:
        hi.pop()
    if not hi:
        return lo, None
    hi[-1] += 1
    return lo, bytes(hi)


def check_key(key: str) -> bytes:
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"store key must be a non-empty string, not {key!r}")
    return key.encode()


def check_value(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument(f"store value must be bytes, not {type(value).__name__}")
    return bytes(value)


def check_txn(puts: list[tuple[str, bytes]], deletes: list[str]) -> None:
    """etcd refuses a transaction touching one key twice; refuse it here too, for both."""
    keys = [k for k, _ in puts] + list(deletes)
    if len(set(keys)) != len(keys):
        raise InvalidArgument(f"transaction writes a key more than once: {sorted(keys)}")
