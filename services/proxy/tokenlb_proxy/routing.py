"""Matching a request to a route, with Kong's rules.

A route matches when every field it sets matches (any listed value within a field):
``paths`` by prefix (or regex with ``~``), ``methods``, ``hosts`` (exact, or one wildcard
label at either end), ``headers``. Among matching routes Kong prefers the one with the
most fields set; then plain hosts over wildcards, more headers, regex over plain paths
(higher ``regex_priority`` first), the longest path, and finally the earlier route.
"""

from __future__ import annotations

from collections.abc import Mapping

from tokenlb_proxy.plan import Gateway, RouteRule

__all__ = ["match_route"]

_MatchKey = tuple[int, int, int, int, int, int, int]


def match_route(
    gateway: Gateway, method: str, path: str, host: str, headers: Mapping[str, str]
) -> RouteRule | None:
    """The route that serves this request, or None."""
    host = host.split(":", 1)[0].lower()
    best: RouteRule | None = None
    best_key: _MatchKey | None = None
    for index, rule in enumerate(gateway.routes):
        key = _match(rule, index, method, path, host, headers)
        if key is not None and (best_key is None or key > best_key):
            best, best_key = rule, key
    return best


def _match(
    rule: RouteRule, index: int, method: str, path: str, host: str, headers: Mapping[str, str]
) -> _MatchKey | None:
    fields = 0
    if rule.methods:
        if method not in rule.methods:
            return None
        fields += 1
    plain_host = 1
    if rule.hosts or rule.wildcard_hosts:
        fields += 1
        if host in rule.hosts:
            plain_host = 1
        elif any(_wildcard_matches(kind, pattern, host) for kind, pattern in rule.wildcard_hosts):
            plain_host = 0
        else:
            return None
    if rule.headers:
        fields += 1
        for name, values in rule.headers:
            if headers.get(name, "").lower() not in values:
                return None
    regex_match = 0
    path_length = 0
    if rule.prefixes or rule.regexes:
        fields += 1
        for pattern in rule.regexes:
            if pattern.match(path):
                regex_match = 1
                path_length = len(pattern.pattern)
                break
        else:
            lengths = [len(p) for p in rule.prefixes if path.startswith(p)]
            if not lengths:
                return None
            path_length = max(lengths)
    return (
        fields,
        plain_host,
        len(rule.headers),
        regex_match,
        rule.regex_priority if regex_match else 0,
        path_length,
        -index,
    )


def _wildcard_matches(kind: str, pattern: str, host: str) -> bool:
    if kind == "suffix":  # "*.example.com" stored as ".example.com"
        return host.endswith(pattern) and len(host) > len(pattern)
    return host.startswith(pattern) and len(host) > len(pattern)  # "example.*" as "example."
