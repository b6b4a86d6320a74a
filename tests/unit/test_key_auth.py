"""key-auth on the request path, against plans compiled from real configs."""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from tokenlb_proxy import auth as auth_module
from tokenlb_proxy.auth import NOBODY, HiddenHeaders, authenticate
from tokenlb_proxy.config import ConfigError, compile_gateway, parse_document
from tokenlb_proxy.errors import Unauthorized
from tokenlb_proxy.plan import KeyAuthPlan
from tokenlb_proxy.routing import match_route

ALICE = "alice-key-0c0ffee"
BOB = "bob-key-d00dfeed"


def key_auth_plan(alice_credential: dict[str, Any] | None = None, **config: Any) -> KeyAuthPlan:
    doc = {
        "_format_version": "3.0",
        "consumers": [
            {
                "username": "alice",
                "id": "a-1",
                "groups": ["gold", "beta"],
                "keyauth_credentials": [{"key": ALICE, "id": "cred-a", **(alice_credential or {})}],
            },
            {"username": "bob", "keyauth_credentials": [{"key": BOB}]},
            {"username": "guest", "custom_id": "g-7"},
        ],
        "consumer_groups": [{"name": "gold"}, {"name": "beta"}],
        "plugins": [
            {
                "name": "ai-proxy-advanced",
                "config": {
                    "targets": [
                        {"model": {"name": "m", "provider": "openai"}, "route_type": "llm/v1/chat"}
                    ]
                },
            },
            {"name": "key-auth", "config": config},
        ],
    }
    gateway = compile_gateway(parse_document(json.dumps(doc), {}), {})
    rule = match_route(gateway, "POST", "/v1/chat/completions", "localhost", {})
    assert rule is not None
    assert rule.key_auth is not None
    return rule.key_auth


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def query(*pairs: tuple[str, str]) -> MultiDictProxy[str]:
    return MultiDictProxy(MultiDict(pairs))


def run(
    plan: KeyAuthPlan,
    header_pairs: tuple[tuple[str, str], ...] = (),
    query_pairs: tuple[tuple[str, str], ...] = (),
    method: str = "POST",
) -> auth_module.Authenticated:
    return authenticate(plan, method, headers(*header_pairs), lambda: query(*query_pairs))


def refusal(
    plan: KeyAuthPlan,
    header_pairs: tuple[tuple[str, str], ...] = (),
    query_pairs: tuple[tuple[str, str], ...] = (),
    method: str = "POST",
) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        run(plan, header_pairs, query_pairs, method)
    return info.value


def test_key_in_the_apikey_header_identifies_the_consumer() -> None:
    result = run(key_auth_plan(), (("ApiKey", ALICE),))
    assert result.consumer is not None
    assert result.consumer.username == "alice"
    assert result.consumer.groups == ("beta", "gold")
    # Kong's upstream headers.
    assert result.upstream_headers == (
        ("x-consumer-id", "a-1"),
        ("x-consumer-username", "alice"),
        ("x-consumer-groups", "beta, gold"),
        ("x-credential-identifier", "cred-a"),
    )
    assert result.hidden_headers == ()


def test_key_in_the_query_string_identifies_the_consumer() -> None:
    result = run(key_auth_plan(), query_pairs=(("apikey", BOB),))
    assert result.consumer is not None
    assert result.consumer.username == "bob"


def test_the_header_is_searched_before_the_query() -> None:
    result = run(key_auth_plan(), (("apikey", BOB),), (("apikey", ALICE),))
    assert result.consumer is not None
    assert result.consumer.username == "bob"


def test_key_names_are_tried_in_order() -> None:
    plan = key_auth_plan(key_names=["x-first", "x-second"])
    only_second = run(plan, (("X-Second", ALICE),))
    assert only_second.consumer is not None
    assert only_second.consumer.username == "alice"
    both = run(plan, (("x-second", ALICE),), (("x-first", BOB),))
    assert both.consumer is not None
    assert both.consumer.username == "bob"
    # The default name no longer counts.
    assert refusal(plan, (("apikey", ALICE),)).message == "No API key found in request"


@pytest.mark.parametrize(
    ("config", "header_pairs", "query_pairs"),
    [
        ({"key_in_header": False}, (("apikey", ALICE),), ()),
        ({"key_in_query": False}, (), (("apikey", ALICE),)),
    ],
)
def test_a_disabled_location_is_not_searched(
    config: dict[str, bool],
    header_pairs: tuple[tuple[str, str], ...],
    query_pairs: tuple[tuple[str, str], ...],
) -> None:
    error = refusal(key_auth_plan(**config), header_pairs, query_pairs)
    assert error.message == "No API key found in request"


@pytest.mark.parametrize("header_pairs", [(), (("apikey", ""),)])
def test_a_missing_or_empty_key_is_kongs_401(header_pairs: tuple[tuple[str, str], ...]) -> None:
    error = refusal(key_auth_plan(), header_pairs)
    assert error.status_code == 401
    assert error.body() == b'{"message":"No API key found in request"}'
    assert error.headers == {"www-authenticate": "Key"}


def test_a_wrong_key_is_kongs_401_without_the_key() -> None:
    wrong = "sk-guess-" + ALICE
    error = refusal(key_auth_plan(realm="ai-gateway"), (("apikey", wrong),))
    assert error.body() == b'{"message":"Unauthorized"}'
    assert error.headers == {"www-authenticate": 'Key realm="ai-gateway"'}
    assert wrong not in str(error)
    assert wrong.encode() not in error.body()


def test_a_key_given_twice_is_refused() -> None:
    error = refusal(key_auth_plan(), (("apikey", ALICE), ("apikey", BOB)))
    assert error.message == "Duplicate API key found"
    error = refusal(key_auth_plan(), query_pairs=(("apikey", ALICE), ("apikey", ALICE)))
    assert error.message == "Duplicate API key found"


@pytest.mark.parametrize("header_pairs", [(), (("apikey", "wrong"),)])
def test_anonymous_serves_failed_authentication_as_that_consumer(
    header_pairs: tuple[tuple[str, str], ...],
) -> None:
    result = run(key_auth_plan(anonymous="guest"), header_pairs)
    assert result.consumer is not None
    assert result.consumer.username == "guest"
    assert result.upstream_headers == (
        ("x-consumer-custom-id", "g-7"),
        ("x-consumer-username", "guest"),
        ("x-anonymous-consumer", "true"),
    )


def test_anonymous_does_not_replace_a_valid_key() -> None:
    result = run(key_auth_plan(anonymous="guest"), (("apikey", BOB),))
    assert result.consumer is not None
    assert result.consumer.username == "bob"


def test_hide_credentials_hides_the_key_header_from_the_upstream() -> None:
    result = run(key_auth_plan(hide_credentials=True, key_names=["api-key"]), (("Api-Key", BOB),))
    assert result.hidden_headers == ("api-key",)
    client = headers(("api-key", BOB), ("user-agent", "sdk"))
    view = HiddenHeaders(client, result.hidden_headers)
    assert view.get("api-key") is None
    assert view.get("Api-Key") is None
    assert dict(view) == {"user-agent": "sdk"}
    assert len(view) == 1


def test_preflight_passes_only_when_run_on_preflight_is_off() -> None:
    assert run(key_auth_plan(run_on_preflight=False), method="OPTIONS") is NOBODY
    assert refusal(key_auth_plan(), method="OPTIONS").message == "No API key found in request"


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    plan = key_auth_plan()
    run(plan, (("apikey", ALICE),))
    assert calls == [(ALICE.encode(), ALICE.encode())]
    # An unknown key is not compared byte by byte with anything: its digest finds nothing.
    refusal(plan, (("apikey", "nobody-has-this"),))
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("age_s", "ttl", "served"), [(10, 60, True), (61, 60, False), (10**6, 0, True)]
)
def test_a_key_expires_ttl_seconds_after_its_creation(age_s: int, ttl: int, served: bool) -> None:
    plan = key_auth_plan({"ttl": ttl, "created_at": int(time.time()) - age_s})
    if served:
        assert run(plan, (("apikey", ALICE),)).consumer is not None
    else:
        assert refusal(plan, (("apikey", ALICE),)).message == "Unauthorized"
    assert run(plan, (("apikey", BOB),)).consumer is not None  # other keys are unaffected


def test_a_negative_ttl_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"keyauth_credentials\[0\]\.ttl: value must be at least 0"
    ):
        key_auth_plan({"ttl": -1})
