"""Consumers, consumer groups and key-auth credentials, and ``key-auth`` plugin entries
compiled into ``KeyAuthPlan``s.

Every form Kong's declarative config allows is accepted: credentials nested under their
consumer or at the top level naming it; group membership on the consumer (``groups``) or on
the group (``consumers``); references by name/username or id. Dangling references and
duplicates are reported the way Kong refuses them, and no error ever shows a key.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from tokenlb_proxy.config.declarative import (
    Consumer,
    DeclarativeConfig,
    EntityRef,
    KeyAuthCredential,
    PluginEntry,
)
from tokenlb_proxy.config.errors import FieldError
from tokenlb_proxy.config.key_auth import KeyAuthConfig, check_key_auth_config
from tokenlb_proxy.config.loader import decode
from tokenlb_proxy.config.scopes import ref_value
from tokenlb_proxy.config.secrets import SecretResolver
from tokenlb_proxy.plan import ConsumerIdentity, Credential, KeyAuthPlan

__all__ = ["People", "compile_consumers", "compile_key_auth"]


@dataclass
class People:
    """The consumers and groups of a config, indexed the ways plugins refer to them."""

    #: Every consumer, in document order.
    identities: list[ConsumerIdentity] = field(default_factory=list)
    #: Consumer id and username -> the consumer.
    consumers: dict[str, ConsumerIdentity] = field(default_factory=dict)
    #: Group id and name -> the group's name (its scope key).
    groups: dict[str, str] = field(default_factory=dict)
    #: sha256(key) -> credential.
    credentials: dict[bytes, Credential] = field(default_factory=dict)

    def consumer(self, ref: EntityRef) -> ConsumerIdentity | None:
        return self.consumers.get(ref_value(ref))

    def group(self, ref: EntityRef) -> str | None:
        return self.groups.get(ref_value(ref))


def compile_consumers(
    doc: DeclarativeConfig, secrets: SecretResolver, errors: list[FieldError]
) -> People:
    """Index every consumer, group and credential of ``doc``."""
    people = People()
    for index, group in enumerate(doc.consumer_groups):
        for ref in (group.id, group.name):
            if ref is not None:
                if ref in people.groups:
                    errors.append(
                        FieldError(f"consumer_groups[{index}]", f"duplicate name or id {ref!r}")
                    )
                people.groups[ref] = group.name

    # Consumer index -> names of its groups, from both sides of the membership.
    members: dict[int, set[str]] = {index: set() for index in range(len(doc.consumers))}
    by_ref: dict[str, int] = {}
    custom_ids: dict[str, int] = {}
    for index, consumer in enumerate(doc.consumers):
        path = f"consumers[{index}]"
        if not (consumer.username or consumer.custom_id):
            errors.append(
                FieldError(
                    path, "at least one of these fields must be non-empty: 'custom_id', 'username'"
                )
            )
        for ref in (consumer.id, consumer.username):
            if ref is not None:
                if ref in by_ref:
                    errors.append(FieldError(path, f"duplicate username or id {ref!r}"))
                by_ref[ref] = index
        if consumer.custom_id is not None:
            if consumer.custom_id in custom_ids:
                errors.append(
                    FieldError(f"{path}.custom_id", f"duplicate custom_id {consumer.custom_id!r}")
                )
            custom_ids[consumer.custom_id] = index
        for g_index, group_ref in enumerate(consumer.groups):
            name = people.group(group_ref)
            if name is None:
                errors.append(
                    FieldError(
                        f"{path}.groups[{g_index}]", f"no consumer group {ref_value(group_ref)!r}"
                    )
                )
            else:
                members[index].add(name)
    for index, group in enumerate(doc.consumer_groups):
        for c_index, member in enumerate(group.consumers):
            found = by_ref.get(ref_value(member))
            if found is None:
                errors.append(
                    FieldError(
                        f"consumer_groups[{index}].consumers[{c_index}]",
                        f"no consumer {ref_value(member)!r}",
                    )
                )
            else:
                members[found].add(group.name)

    identities = people.identities = [
        _identity(consumer, index, tuple(sorted(members[index])))
        for index, consumer in enumerate(doc.consumers)
    ]
    people.consumers = {ref: identities[index] for ref, index in by_ref.items()}

    seen_keys: dict[bytes, str] = {}

    def add_credential(credential: KeyAuthCredential, path: str, owner: ConsumerIdentity) -> None:
        reported = len(errors)
        key = secrets.resolve(credential.key, f"{path}.key", errors)
        if len(errors) == reported and not key:
            errors.append(FieldError(f"{path}.key", "length must be at least 1"))
        if credential.ttl is not None and credential.ttl < 0:
            errors.append(FieldError(f"{path}.ttl", "value must be at least 0"))
        if len(errors) > reported:
            return
        digest = hashlib.sha256(key.encode()).digest()
        if digest in seen_keys:
            # Name the other credential, never the key.
            errors.append(FieldError(f"{path}.key", f"the same key as {seen_keys[digest]}"))
            return
        seen_keys[digest] = path
        headers = _consumer_headers(owner)
        if credential.id is not None:
            headers += (("x-credential-identifier", credential.id),)
        people.credentials[digest] = Credential(
            key=key.encode(),
            consumer=owner,
            upstream_headers=headers,
            expires_at=_expiry(credential),
        )

    for index, consumer in enumerate(doc.consumers):
        for k_index, credential in enumerate(consumer.keyauth_credentials):
            path = f"consumers[{index}].keyauth_credentials[{k_index}]"
            if credential.consumer is not None:
                named = people.consumer(credential.consumer)
                if named is not identities[index]:
                    errors.append(
                        FieldError(f"{path}.consumer", "names another consumer than its parent")
                    )
                    continue
            add_credential(credential, path, identities[index])
    for index, credential in enumerate(doc.keyauth_credentials):
        path = f"keyauth_credentials[{index}]"
        if credential.consumer is None:
            errors.append(FieldError(f"{path}.consumer", "required field missing"))
            continue
        owner = people.consumer(credential.consumer)
        if owner is None:
            errors.append(
                FieldError(f"{path}.consumer", f"no consumer {ref_value(credential.consumer)!r}")
            )
            continue
        add_credential(credential, path, owner)
    return people


def compile_key_auth(
    entry: PluginEntry,
    path: str,
    people: People,
    secrets: SecretResolver,
    errors: list[FieldError],
) -> KeyAuthPlan | None:
    """The key-auth plugin at ``path``, or None after adding its problems to ``errors``."""
    cpath = f"{path}.config"
    config = decode(secrets.resolve(entry.config, cpath, errors), KeyAuthConfig, cpath, errors)
    if config is None:
        return None
    problems = check_key_auth_config(config, cpath)
    anonymous: ConsumerIdentity | None = None
    if config.anonymous is not None:
        anonymous = people.consumers.get(config.anonymous)
        if anonymous is None:
            problems.append(FieldError(f"{cpath}.anonymous", f"no consumer {config.anonymous!r}"))
    if problems:
        errors.extend(problems)
        return None
    return KeyAuthPlan(
        key_names=config.key_names,
        header_names=tuple(name.lower() for name in config.key_names),
        in_header=config.key_in_header,
        in_query=config.key_in_query,
        hide_credentials=config.hide_credentials,
        run_on_preflight=config.run_on_preflight,
        challenge=f'Key realm="{config.realm}"' if config.realm is not None else "Key",
        anonymous=anonymous,
        anonymous_headers=(
            (*_consumer_headers(anonymous), ("x-anonymous-consumer", "true"))
            if anonymous is not None
            else ()
        ),
        credentials=people.credentials,
    )


def _identity(consumer: Consumer, index: int, groups: tuple[str, ...]) -> ConsumerIdentity:
    return ConsumerIdentity(
        key=consumer.username or consumer.id or consumer.custom_id or f"consumer#{index}",
        id=consumer.id,
        username=consumer.username,
        custom_id=consumer.custom_id,
        groups=groups,
    )


def _consumer_headers(consumer: ConsumerIdentity) -> tuple[tuple[str, str], ...]:
    """Kong's upstream headers naming the consumer; a header whose value is unknown is left
    out, as Kong clears it."""
    headers = (
        ("x-consumer-id", consumer.id),
        ("x-consumer-custom-id", consumer.custom_id),
        ("x-consumer-username", consumer.username),
        ("x-consumer-groups", ", ".join(consumer.groups) or None),
    )
    return tuple((name, value) for name, value in headers if value is not None)


def _expiry(credential: KeyAuthCredential) -> float | None:
    """When ``credential`` stops working: its ``ttl`` counted from its creation, as Kong
    counts it (a ttl of 0, like none, never expires). A credential without a creation time
    (a file read without normalising) counts from now."""
    if not credential.ttl:
        return None
    created = credential.created_at if credential.created_at is not None else time.time()
    return created + credential.ttl
