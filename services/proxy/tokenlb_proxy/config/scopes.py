"""Plugin scopes and Kong's precedence between them.

A plugin applies to a scope: any combination of a consumer or a consumer group with a route
and/or a service, or none of them (global). When several apply to one request the most
specific wins, in exactly the order Kong's plugin iterator (``lookup_cfg``) tries them:

    1. consumer + route + service        7. route + service
    2. consumer group + route + service  8. consumer
    3. consumer + route                  9. consumer group
    4. consumer + service               10. route
    5. consumer group + route           11. service
    6. consumer group + service         12. global

A consumer in several groups: at each group level the groups are tried in name order, so the
group whose name sorts first wins among groups on the same level.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple, TypeVar

from tokenlb_proxy.config.declarative import EntityRef

__all__ = ["GLOBAL", "Scope", "precedence", "ref_value", "resolve", "scope_name"]

T = TypeVar("T")


class Scope(NamedTuple):
    """Where a plugin applies; each part is the key of an entity, or None for "any"."""

    consumer: str | None = None
    group: str | None = None
    route: str | None = None
    service: str | None = None


GLOBAL = Scope()


def precedence(
    route: str | None,
    service: str | None,
    consumer: str | None = None,
    groups: tuple[str, ...] = (),
) -> Iterator[Scope]:
    """The scopes that apply to a request, most specific first."""
    if route and service and consumer:
        yield Scope(consumer, None, route, service)
    if route and service:
        for group in groups:
            yield Scope(None, group, route, service)
    if route and consumer:
        yield Scope(consumer, None, route, None)
    if service and consumer:
        yield Scope(consumer, None, None, service)
    if route:
        for group in groups:
            yield Scope(None, group, route, None)
    if service:
        for group in groups:
            yield Scope(None, group, None, service)
    if route and service:
        yield Scope(None, None, route, service)
    if consumer:
        yield Scope(consumer, None, None, None)
    for group in groups:
        yield Scope(None, group, None, None)
    if route:
        yield Scope(None, None, route, None)
    if service:
        yield Scope(None, None, None, service)
    yield GLOBAL


def resolve(
    plugins: Mapping[Scope, T],
    route: str | None,
    service: str | None,
    consumer: str | None = None,
    groups: tuple[str, ...] = (),
) -> T | None:
    """The plugin of the most specific scope that applies, or None."""
    for scope in precedence(route, service, consumer, groups):
        found = plugins.get(scope)
        if found is not None:
            return found
    return None


def scope_name(scope: Scope) -> str:
    """``consumer:alice+route:chat``; ``global`` for the global scope."""
    parts = [
        f"{kind}:{key}"
        for kind, key in zip(("consumer", "consumer_group", "route", "service"), scope, strict=True)
        if key is not None
    ]
    return "+".join(parts) or "global"


def ref_value(ref: EntityRef) -> str:
    """The name or id a reference holds (``"alice"``, ``{"id": ...}``, ``{"username": ...}``)."""
    if isinstance(ref, str):
        return ref
    return ref.get("id") or ref.get("name") or ref.get("username") or ""
