"""Who may change the fleet's config through the Admin API.

Kong's Admin API has no authentication of its own and relies on binding to loopback;
Kong Enterprise adds RBAC tokens in the ``Kong-Admin-Token`` header. tokenlb does the
same with one token: bound to loopback, the API is open unless ``TOKENLB_ADMIN_TOKEN`` is
set; bound anywhere else, ``tokenlb proxy`` refuses to start without a token (a config
API open to a network would hand out the upstream API keys it holds).

``/status``, ``/stats`` and ``/metrics`` stay open even with a token: health checks,
load balancers and Prometheus scrapers poll them without credentials, and they show
counters and configuration hashes, never a config, a key or the token.
"""

from __future__ import annotations

import hmac
import ipaddress

__all__ = ["TOKEN_HEADER", "is_loopback", "token_matches"]

#: Kong Enterprise's RBAC header.
TOKEN_HEADER = "kong-admin-token"  # noqa: S105 - a header name, not a secret


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so response times do not reveal how much of a guessed
    token was right."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
