"""Turning a decoded kong.yaml into a ``Gateway``: resolve references, place every plugin
in its scope, validate each plugin's config, and precompute, per route, which plugin serves
which consumer (Kong's precedence, ``scopes.py``), so a request does dict lookups only.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from tokenlb_proxy.config.balancer import compile_balancer
from tokenlb_proxy.config.consumers import People, compile_consumers, compile_key_auth
from tokenlb_proxy.config.declarative import DeclarativeConfig, PluginEntry, Route, Service
from tokenlb_proxy.config.errors import ConfigError, FieldError
from tokenlb_proxy.config.plugins import AI_PROXY_ADVANCED, KEY_AUTH, PLUGIN_SCHEMAS
from tokenlb_proxy.config.scopes import Scope, ref_value, resolve
from tokenlb_proxy.config.secrets import SecretResolver
from tokenlb_proxy.config.support import NOT_SUPPORTED
from tokenlb_proxy.plan import BalancerPlan, ConsumerIdentity, Gateway, KeyAuthPlan, RouteRule

__all__ = ["DEFAULT_CHAT_PATH", "compile_gateway"]

#: What a config without routes serves.
DEFAULT_CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class _Placed:
    entry: PluginEntry
    path: str


def compile_gateway(doc: DeclarativeConfig, environ: Mapping[str, str] | None = None) -> Gateway:
    """Compile ``doc`` or raise ``ConfigError`` listing every problem.

    ``environ`` (default: the process environment) resolves ``{vault://env/...}`` secret
    references; no error message ever shows a resolved value.
    """
    errors: list[FieldError] = []
    secrets = SecretResolver(os.environ if environ is None else environ)
    services: dict[str, tuple[int, Service]] = {}
    for index, service in enumerate(doc.services):
        for ref in (service.id, service.name):
            if ref is not None:
                if ref in services:
                    errors.append(FieldError(f"services[{index}]", f"duplicate name or id {ref!r}"))
                services[ref] = (index, service)

    # (route, path, key of its service or None)
    routes: list[tuple[Route, str, str | None]] = []
    for s_index, service in enumerate(doc.services):
        for r_index, route in enumerate(service.routes):
            routes.append(
                (route, f"services[{s_index}].routes[{r_index}]", _service_key(service, s_index))
            )
    for r_index, route in enumerate(doc.routes):
        path = f"routes[{r_index}]"
        service_key = None
        if route.service is not None:
            found = services.get(ref_value(route.service))
            if found is None:
                errors.append(
                    FieldError(f"{path}.service", f"no service {ref_value(route.service)!r}")
                )
            else:
                service_key = _service_key(found[1], found[0])
        routes.append((route, path, service_key))

    route_keys: dict[str, str] = {}
    for index, (route, path, _) in enumerate(routes):
        key = _route_key(route, index)
        for ref in (route.id, route.name):
            if ref is not None:
                if ref in route_keys:
                    errors.append(FieldError(path, f"duplicate route name or id {ref!r}"))
                route_keys[ref] = key

    people = compile_consumers(doc, secrets, errors)
    placement = _Placement(services, route_keys, people, secrets, errors)
    for index, entry in enumerate(doc.plugins):
        placement.add(entry, f"plugins[{index}]", Scope())
    for s_index, service in enumerate(doc.services):
        for p_index, entry in enumerate(service.plugins):
            placement.add(
                entry,
                f"services[{s_index}].plugins[{p_index}]",
                Scope(service=_service_key(service, s_index)),
            )
    for index, (route, path, _) in enumerate(routes):
        for p_index, entry in enumerate(route.plugins):
            placement.add(
                entry, f"{path}.plugins[{p_index}]", Scope(route=_route_key(route, index))
            )
    for c_index, consumer in enumerate(doc.consumers):
        owner = people.identities[c_index].key
        for p_index, entry in enumerate(consumer.plugins):
            placement.add(entry, f"consumers[{c_index}].plugins[{p_index}]", Scope(consumer=owner))
    for g_index, group in enumerate(doc.consumer_groups):
        for p_index, entry in enumerate(group.plugins):
            placement.add(
                entry, f"consumer_groups[{g_index}].plugins[{p_index}]", Scope(group=group.name)
            )

    plans: dict[Scope, BalancerPlan] = {}
    for scope, placed in placement.balancers.items():
        plan = compile_balancer(placed.entry, placed.path, scope, secrets, errors)
        if plan is not None:
            plans[scope] = plan
    key_auths: dict[Scope, KeyAuthPlan] = {}
    for scope, placed in placement.key_auths.items():
        key_auth = compile_key_auth(placed.entry, placed.path, people, secrets, errors)
        if key_auth is not None:
            key_auths[scope] = key_auth

    # Only consumers that a consumer or consumer-group scoped plugin names can be served
    # by anything but a route's ``plan``.
    scoped_consumers = {s.consumer for s in plans if s.consumer is not None}
    scoped_groups = {s.group for s in plans if s.group is not None}
    candidates = [
        identity
        for identity in people.identities
        if identity.key in scoped_consumers or scoped_groups.intersection(identity.groups)
    ]
    rules: list[RouteRule] = []
    for index, (route, path, service_key) in enumerate(routes):
        rule = _compile_route(route, path, index, service_key, plans, key_auths, candidates, errors)
        if rule is not None:
            rules.append(rule)
    if not routes:
        # Even with no plugin at all: an empty config is where the Admin API starts from,
        # and Kong accepts it (requests then get a 404 naming the route).
        rules.append(
            RouteRule(
                name="default",
                service=None,
                prefixes=(DEFAULT_CHAT_PATH,),
                regexes=(),
                methods=frozenset({"POST"}),
                hosts=frozenset(),
                wildcard_hosts=(),
                headers=(),
                regex_priority=0,
                plan=resolve(plans, None, None),
                consumer_plans=_consumer_plans(plans, None, None, candidates),
                key_auth=resolve(key_auths, None, None),
            )
        )
    if errors:
        raise ConfigError(errors).redacted(secrets.values)
    version = hashlib.sha256(msgspec.json.encode(doc)).hexdigest()[:12]
    return Gateway(routes=tuple(rules), balancers=tuple(plans.values()), version=version)


class _Placement:
    """Puts each plugin entry in its scope, reporting what cannot be placed.

    A plugin that cannot be placed still has its config checked, so one run of
    ``tokenlb check`` lists every problem, not just the scope or reference error.
    """

    def __init__(
        self,
        services: dict[str, tuple[int, Service]],
        route_keys: dict[str, str],
        people: People,
        secrets: SecretResolver,
        errors: list[FieldError],
    ) -> None:
        self._services = services
        self._route_keys = route_keys
        self._people = people
        self._secrets = secrets
        self._errors = errors
        self._instance_names: dict[str, str] = {}
        self.balancers: dict[Scope, _Placed] = {}
        self.key_auths: dict[Scope, _Placed] = {}

    def add(self, entry: PluginEntry, path: str, implied: Scope) -> None:
        """Place ``entry``, found at ``path`` nested in the ``implied`` scope."""
        if not entry.enabled:
            return
        errors = self._errors
        if entry.name not in PLUGIN_SCHEMAS:
            errors.append(FieldError(f"{path}.name", f"plugin {entry.name!r} is {NOT_SUPPORTED}"))
            return
        scope, placeable = self._scope(entry, path, implied)
        if entry.ordering is not None:
            errors.append(FieldError(f"{path}.ordering", f"{NOT_SUPPORTED} (plugin ordering)"))
        if entry.instance_name is not None:
            other = self._instance_names.setdefault(entry.instance_name, path)
            if other != path:
                errors.append(
                    FieldError(
                        f"{path}.instance_name",
                        f"duplicate instance_name {entry.instance_name!r} (also {other})",
                    )
                )
                placeable = False
        table = self.balancers if entry.name == AI_PROXY_ADVANCED else self.key_auths
        if placeable and scope in table:
            errors.append(
                FieldError(
                    path, f"a second {entry.name} plugin for the same scope as {table[scope].path}"
                )
            )
            placeable = False
        if placeable:
            table[scope] = _Placed(entry, path)
        elif entry.name == AI_PROXY_ADVANCED:
            compile_balancer(entry, path, scope, self._secrets, errors)
        else:
            compile_key_auth(entry, path, self._people, self._secrets, errors)

    def _scope(self, entry: PluginEntry, path: str, implied: Scope) -> tuple[Scope, bool]:
        errors = self._errors
        consumer, group, route, service = implied
        placeable = True
        if entry.route is not None:
            route = self._route_keys.get(ref_value(entry.route))
            if route is None:
                errors.append(FieldError(f"{path}.route", f"no route {ref_value(entry.route)!r}"))
                placeable = False
        if entry.service is not None:
            found = self._services.get(ref_value(entry.service))
            if found is None:
                errors.append(
                    FieldError(f"{path}.service", f"no service {ref_value(entry.service)!r}")
                )
                placeable = False
            else:
                service = _service_key(found[1], found[0])
        if entry.consumer is not None:
            identity = self._people.consumer(entry.consumer)
            if identity is None:
                errors.append(
                    FieldError(f"{path}.consumer", f"no consumer {ref_value(entry.consumer)!r}")
                )
                placeable = False
            else:
                consumer = identity.key
        if entry.consumer_group is not None:
            group = self._people.group(entry.consumer_group)
            if group is None:
                errors.append(
                    FieldError(
                        f"{path}.consumer_group",
                        f"no consumer group {ref_value(entry.consumer_group)!r}",
                    )
                )
                placeable = False
        if entry.name == KEY_AUTH:
            # Kong's key-auth schema: `consumer = typedefs.no_consumer`; it identifies
            # consumers, so it cannot depend on one.
            for name, key in (("consumer", consumer), ("consumer_group", group)):
                if key is not None or getattr(entry, name) is not None:
                    errors.append(
                        FieldError(f"{path}.{name}", f"value must be null for {KEY_AUTH}")
                    )
                    placeable = False
        elif consumer is not None and group is not None:
            errors.append(
                FieldError(
                    path, "a plugin cannot be scoped to both a consumer and a consumer group"
                )
            )
            placeable = False
        return Scope(consumer, group, route, service), placeable


def _consumer_plans(
    plans: dict[Scope, BalancerPlan],
    route_key: str | None,
    service_key: str | None,
    candidates: list[ConsumerIdentity],
) -> dict[str, BalancerPlan]:
    """The consumers a consumer or group scoped plugin serves on this route, instead of the
    route's own plan."""
    base = resolve(plans, route_key, service_key)
    result: dict[str, BalancerPlan] = {}
    for identity in candidates:
        plan = resolve(plans, route_key, service_key, identity.key, identity.groups)
        if plan is not None and plan is not base:
            result[identity.key] = plan
    return result


def _compile_route(
    route: Route,
    path: str,
    index: int,
    service_key: str | None,
    plans: dict[Scope, BalancerPlan],
    key_auths: dict[Scope, KeyAuthPlan],
    candidates: list[ConsumerIdentity],
    errors: list[FieldError],
) -> RouteRule | None:
    if not (route.paths or route.hosts or route.methods or route.headers):
        errors.append(FieldError(path, "must set at least one of paths, hosts, methods, headers"))
        return None
    prefixes: list[str] = []
    regexes: list[re.Pattern[str]] = []
    for p_index, route_path in enumerate(route.paths or ()):
        if route_path.startswith("~"):
            try:
                regexes.append(re.compile(route_path[1:]))
            except re.error as exc:
                errors.append(FieldError(f"{path}.paths[{p_index}]", f"invalid regex: {exc}"))
        elif route_path.startswith("/"):
            prefixes.append(route_path)
        else:
            errors.append(
                FieldError(f"{path}.paths[{p_index}]", "must start with / (or ~ for a regex)")
            )
    hosts: set[str] = set()
    wildcards: list[tuple[str, str]] = []
    for host in (h.lower() for h in route.hosts or ()):
        if host.startswith("*."):
            wildcards.append(("suffix", host[1:]))
        elif host.endswith(".*"):
            wildcards.append(("prefix", host[:-1]))
        else:
            hosts.add(host)
    route_key = _route_key(route, index)
    return RouteRule(
        name=route.name or route.id or f"route#{index}",
        service=service_key,
        prefixes=tuple(prefixes),
        regexes=tuple(regexes),
        methods=frozenset(m.upper() for m in route.methods or ()),
        hosts=frozenset(hosts),
        wildcard_hosts=tuple(wildcards),
        headers=tuple(
            (name.lower(), frozenset(v.lower() for v in values))
            for name, values in (route.headers or {}).items()
        ),
        regex_priority=route.regex_priority,
        plan=resolve(plans, route_key, service_key),
        consumer_plans=_consumer_plans(plans, route_key, service_key, candidates),
        key_auth=resolve(key_auths, route_key, service_key),
    )


def _service_key(service: Service, index: int) -> str:
    return service.name or service.id or f"service#{index}"


def _route_key(route: Route, index: int) -> str:
    return route.name or route.id or f"route#{index}"
