"""Which stream an event goes to when wss runs with sharded streams (docs/contract.md §8).

With ``WSS_STREAM_SHARDS=N`` the service reads N streams, and one tenant's events must all land in
the same one, or they are not delivered in order. ``PublishEvent`` picks the shard itself; a
producer that writes with ``XADD`` picks it here, by the same function as the service::

    import redis
    from wss_client import stream_key

    r = redis.Redis()
    r.xadd(stream_key("wss:", "acme", 8), {"tenant": "acme", "type": "order.created", "data": '{"order_id":"A-7"}'})

The function is fixed by the contract, so every implementation (the service's, these, a
producer's own) gives the same shard; ``tests/vectors/shards.json`` holds the cases they all pass.
"""

import zlib


def shard_of(tenant: str, n: int) -> int:
    """The shard, in ``0..n-1``, of ``tenant``'s events when the service runs with ``n`` shards:
    the CRC-32 (IEEE, zlib's) of the tenant id's UTF-8 bytes, mod ``n``.

    ``n`` is the service's ``WSS_STREAM_SHARDS``; with ``n == 1`` every tenant is in shard 0.
    Raises ``ValueError`` when ``n`` is not an integer ≥ 1 or ``tenant`` is not encodable as UTF-8
    (a lone surrogate), ``TypeError`` when ``tenant`` is not a ``str``.
    """
    if not isinstance(tenant, str):
        raise TypeError(f"tenant must be a str (the tenant id), got {type(tenant).__name__}")
    # bool is an int in Python; shard_of("acme", True) is a mistake, not n = 1.
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be the service's WSS_STREAM_SHARDS, an integer >= 1; got {n!r}")
    # zlib.crc32 is unsigned on Python 3 (0..2**32-1), so the remainder needs no masking.
    return zlib.crc32(tenant.encode("utf-8")) % n


def stream_key(prefix: str, tenant: str, n: int) -> str:
    """The Redis key of the stream that holds ``tenant``'s events: ``<prefix>events`` when ``n ==
    1`` (the unsharded stream keeps its name), else ``<prefix>events:{k}`` with ``k =
    shard_of(tenant, n)``; the braces are the Redis Cluster hash tag that keeps the shard's keys in
    one slot.

    ``prefix`` is the service's ``WSS_KEY_PREFIX`` (default ``wss:``), used as it is.
    """
    shard = shard_of(tenant, n)
    return f"{prefix}events" if n == 1 else f"{prefix}events:{{{shard}}}"
