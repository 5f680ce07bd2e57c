"""redis-py as an optional dependency: loading it, connecting, naming keys, and the
errors that mean Redis cannot be reached. Shared by the store, the lease and the
consumer, so none of them imports another for these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Tuple, Type

from ..errors import StoreError, install_hint

if TYPE_CHECKING:  # pragma: no cover
    import redis

try:  # redis-py and msgpack are optional dependencies (the ``redis`` extra)
    import msgpack
    import redis as _redis
except ImportError:  # pragma: no cover - the extra is installed for the tests
    _redis = msgpack = None  # type: ignore[assignment]

Fields = Dict[bytes, bytes]
"""A hash, or a stream entry's fields, as a client of `connect` reads them."""
Entries = List[Tuple[bytes, Fields]]
"""Stream entries (``XRANGE``, ``XREADGROUP``'s per stream) as a client of `connect` reads them."""

REDIS_ERRORS: Tuple[Type[BaseException], ...] = (_redis.ConnectionError, _redis.TimeoutError) if _redis is not None else ()
"""redis-py's errors for a Redis that cannot be reached (or is loading): retried, not fatal."""


def load_redis() -> Any:
    """redis-py, or a clear error when the extra is missing."""
    if _redis is None:  # pragma: no cover - the extra is installed for the tests
        raise StoreError(f"Redis support needs redis-py and msgpack: {install_hint('redis')}")
    return _redis


def connect(url: str) -> "redis.Redis":
    """A redis-py client for ``url`` with timeouts, so an unreachable server fails instead of hanging.

    Its replies are bytes, never decoded (no ``decode_responses``): redis-py types them
    ``bytes | str``, so readers ``cast`` them to bytes, `Fields` and `Entries`."""
    return load_redis().Redis.from_url(url, socket_timeout=5.0, socket_connect_timeout=5.0, health_check_interval=10)


def feed_key(prefix: str, feed: str, name: str) -> str:
    return f"{prefix}:{feed}:{name}"
