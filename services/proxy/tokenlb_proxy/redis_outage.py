"""What a Redis outage looks like to the code that calls redis-py.

The store, the config watcher and start-up all treat an outage the same way (serve what
they have, retry later), so they share one test for it; the commands that cannot go on
without Redis share one line to report it (``describe_outage``):

- ``RedisError``: refused, reset, timed out, loading, out of memory, read-only replica,
  cluster down. ``RedisClusterException`` (a slot no master serves) is not one of them.
- ``OSError`` from the socket layer, and ``RuntimeError``: under uvloop, redis-py's cluster
  client can write to a connection whose transport a dead node already closed ("unable to
  perform operation on <TCPTransport closed=True>").
- ``AttributeError`` or ``TypeError`` raised inside a redis-py call: its asyncio
  connections race with their own disconnect when a node dies under concurrent use
  (``'NoneType' object has no attribute 'writelines'``; ``'NoneType' object is not
  callable`` from the transport below it, redis/redis-py#3546). Raised outside redis-py,
  they are bugs and propagate.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.exceptions import RedisClusterException, RedisError

from tokenlb_proxy.settings import redact_url

__all__ = ["describe_outage", "is_outage"]

_OUTAGE_ERRORS = (RedisError, RedisClusterException, OSError, RuntimeError)
_RACE_ERRORS = (AttributeError, TypeError)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means Redis is (for now) out of reach rather than a bug."""
    if isinstance(exc, _OUTAGE_ERRORS):
        return True
    if not isinstance(exc, _RACE_ERRORS):
        return False
    frame = exc.__traceback__
    while frame is not None:
        module = frame.tb_frame.f_globals.get("__name__", "")
        if module == "redis" or module.startswith("redis."):
            return True
        frame = frame.tb_next
    return False


def describe_outage(redis_url: str, exc: BaseException) -> str:
    """The line every command prints when Redis does not answer: the URL with its
    password masked, and redis-py's reason on the same line (its messages name the host
    and port, never the password; it is masked there too, in case one ever does)."""
    reason = " ".join(str(exc).split())
    password = urlsplit(redis_url).password
    if password:
        reason = reason.replace(password, "***")
    return f"Redis at {redact_url(redis_url)} is unreachable ({type(exc).__name__}: {reason})"
