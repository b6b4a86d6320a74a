"""decK / kong.yaml entities: services, routes, consumers, consumer groups, key-auth
credentials and plugin entries.

One model for every way config arrives: a kong.yaml (entities nested or flat, referring to
each other by name or id), the Admin API (flat, by id) and the document the fleet shares in
Redis (flat, every entity with an id; see ``config/entities.py``).

Only the entity fields that matter to an AI gateway are interpreted; fields that steer a
plain HTTP upstream (a service's ``url``, ``retries``, TLS settings) are accepted because
``ai-proxy-advanced`` replaces that upstream, exactly as it does in Kong.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = [
    "Consumer",
    "ConsumerGroup",
    "DeclarativeConfig",
    "EntityRef",
    "KeyAuthCredential",
    "PluginEntry",
    "Route",
    "Service",
]

#: A reference to another entity: its name or id, or ``{"id": ...}`` / ``{"name": ...}`` as
#: the Admin API writes it.
EntityRef = str | dict[str, str]


class PluginEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One ``plugins[]`` entry; ``config`` is decoded by the plugin's own schema."""

    name: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None
    instance_name: str | None = None
    enabled: bool = True
    protocols: tuple[Literal["grpc", "grpcs", "http", "https", "ws", "wss"], ...] = (
        "grpc",
        "grpcs",
        "http",
        "https",
    )
    service: EntityRef | None = None
    route: EntityRef | None = None
    consumer: EntityRef | None = None
    consumer_group: EntityRef | None = None
    ordering: dict[str, Any] | None = None
    tags: tuple[str, ...] | None = None
    created_at: int | None = None
    updated_at: int | None = None


class Route(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A route: which requests reach a service."""

    name: str | None = None
    id: str | None = None
    paths: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None
    headers: dict[str, list[str]] | None = None
    protocols: tuple[Literal["http", "https"], ...] = ("http", "https")
    service: EntityRef | None = None
    plugins: tuple[PluginEntry, ...] = ()
    strip_path: bool = True
    preserve_host: bool = False
    regex_priority: int = 0
    path_handling: Literal["v0", "v1"] = "v0"
    https_redirect_status_code: int = 426
    request_buffering: bool = True
    response_buffering: bool = True
    tags: tuple[str, ...] | None = None
    created_at: int | None = None
    updated_at: int | None = None


class Service(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A service: a group of routes that share plugins."""

    name: str | None = None
    id: str | None = None
    url: str | None = None
    protocol: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    retries: int | None = None
    connect_timeout: int | None = None
    write_timeout: int | None = None
    read_timeout: int | None = None
    enabled: bool = True
    tls_verify: bool | None = None
    tls_verify_depth: int | None = None
    ca_certificates: tuple[str, ...] | None = None
    client_certificate: EntityRef | None = None
    routes: tuple[Route, ...] = ()
    plugins: tuple[PluginEntry, ...] = ()
    tags: tuple[str, ...] | None = None
    created_at: int | None = None
    updated_at: int | None = None


class KeyAuthCredential(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A ``key-auth`` credential: the API key that identifies a consumer.

    Nested under a consumer in decK form; top level (with ``consumer``) in the flat form.
    """

    key: str
    id: str | None = None
    consumer: EntityRef | None = None
    ttl: int | None = None
    tags: tuple[str, ...] | None = None
    created_at: int | None = None

    def __repr__(self) -> str:
        # The key is a secret: never part of a repr that may reach a log.
        return f"KeyAuthCredential(id={self.id!r})"


class ConsumerGroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A consumer group: consumers that share plugins."""

    name: str
    id: str | None = None
    #: decK form: members by username or id (the flat form keeps them on the consumer).
    consumers: tuple[EntityRef, ...] = ()
    plugins: tuple[PluginEntry, ...] = ()
    tags: tuple[str, ...] | None = None
    created_at: int | None = None
    updated_at: int | None = None


class Consumer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A consumer: who is calling, identified by a key-auth credential."""

    username: str | None = None
    custom_id: str | None = None
    id: str | None = None
    keyauth_credentials: tuple[KeyAuthCredential, ...] = ()
    #: The groups this consumer belongs to, by name or id.
    groups: tuple[EntityRef, ...] = ()
    plugins: tuple[PluginEntry, ...] = ()
    tags: tuple[str, ...] | None = None
    created_at: int | None = None
    updated_at: int | None = None


class DeclarativeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A kong.yaml document."""

    _format_version: Literal["1.1", "2.1", "3.0"] = msgspec.field(
        default="3.0", name="_format_version"
    )
    _transform: bool = msgspec.field(default=True, name="_transform")
    _info: dict[str, Any] | None = msgspec.field(default=None, name="_info")
    _workspace: str | None = msgspec.field(default=None, name="_workspace")
    services: tuple[Service, ...] = ()
    routes: tuple[Route, ...] = ()
    plugins: tuple[PluginEntry, ...] = ()
    consumers: tuple[Consumer, ...] = ()
    consumer_groups: tuple[ConsumerGroup, ...] = ()
    #: Flat form: credentials at the top level, each naming its consumer.
    keyauth_credentials: tuple[KeyAuthCredential, ...] = ()
