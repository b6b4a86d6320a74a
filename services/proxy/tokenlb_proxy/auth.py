"""key-auth on the request path: find the key, identify the consumer, or refuse with Kong's
401 before the body is read, the store is touched or anything is forwarded.

As Kong's handler does: for each of ``key_names`` in order, the header (any case), then the
query parameter; the first found is the key. A key that is missing or empty answers
"No API key found in request", a key nobody holds "Unauthorized" (Kong 3.x wording), a key
given twice "Duplicate API key found"; every 401 carries ``WWW-Authenticate``. With
``anonymous`` set, a failed authentication serves the request as that consumer instead.

The key is looked up by its sha256 digest, then compared with ``hmac.compare_digest``:
neither step takes longer the more leading bytes of a guess are right.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from multidict import MultiMapping

from tokenlb_proxy.errors import Unauthorized
from tokenlb_proxy.plan import ConsumerIdentity, KeyAuthPlan

__all__ = ["NOBODY", "Authenticated", "HiddenHeaders", "authenticate"]

NO_KEY = "No API key found in request"
INVALID_KEY = "Unauthorized"
DUPLICATE_KEY = "Duplicate API key found"


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Who a request is served as, and what that changes in its upstream call."""

    consumer: ConsumerIdentity | None
    #: Kong's ``X-Consumer-*`` headers for the upstream call.
    upstream_headers: tuple[tuple[str, str], ...]
    #: Client headers the upstream must not see (``hide_credentials``), lower case.
    hidden_headers: tuple[str, ...]


#: No key-auth plugin applies (or it let a preflight through): nobody is identified.
NOBODY = Authenticated(None, (), ())


def authenticate(
    plan: KeyAuthPlan,
    method: str,
    headers: MultiMapping[str],
    query: Callable[[], MultiMapping[str]],
) -> Authenticated:
    """Identify the consumer of a request or raise ``Unauthorized``.

    ``headers`` must look names up case-insensitively; ``query`` is only called when the
    query string has to be searched.
    """
    if method == "OPTIONS" and not plan.run_on_preflight:
        return NOBODY
    key: str | None = None
    hidden: tuple[str, ...] = ()
    params: MultiMapping[str] | None = None
    failure: str | None = None
    for name, header_name in zip(plan.key_names, plan.header_names, strict=True):
        if plan.in_header:
            key = headers.get(header_name)
            if key is not None and len(headers.getall(header_name)) > 1:
                failure = DUPLICATE_KEY
        if key is None and plan.in_query:
            if params is None:
                params = query()
            key = params.get(name)
            if key is not None and len(params.getall(name)) > 1:
                failure = DUPLICATE_KEY
        if key is not None:
            if plan.hide_credentials:
                hidden = (header_name,)
            break
    if failure is None:
        if not key:
            failure = NO_KEY
        else:
            presented = key.encode()
            credential = plan.credentials.get(hashlib.sha256(presented).digest())
            if (
                credential is not None
                and hmac.compare_digest(credential.key, presented)
                and (credential.expires_at is None or time.time() < credential.expires_at)
            ):
                return Authenticated(credential.consumer, credential.upstream_headers, hidden)
            failure = INVALID_KEY
    if plan.anonymous is not None:
        return Authenticated(plan.anonymous, plan.anonymous_headers, hidden)
    raise Unauthorized(failure, headers={"www-authenticate": plan.challenge})


class HiddenHeaders(Mapping[str, str]):
    """The client's headers without those ``hide_credentials`` keeps from the upstream."""

    __slots__ = ("_headers", "_hidden")

    def __init__(self, headers: Mapping[str, str], hidden: tuple[str, ...]) -> None:
        self._headers = headers
        self._hidden = hidden

    def __getitem__(self, name: str) -> str:
        if name.lower() in self._hidden:
            raise KeyError(name)
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._headers if name.lower() not in self._hidden)

    def __len__(self) -> int:
        return sum(1 for _ in self)
