"""Chat requests: what a client may send, and the body each target receives."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from tokenlb_proxy.chat import (
    BAD_JSON,
    NO_PROMPTS,
    ParsedRequest,
    parse_chat_request,
    upstream_body,
)
from tokenlb_proxy.config import compile_gateway, parse_document
from tokenlb_proxy.errors import InvalidRequest
from tokenlb_proxy.plan import UpstreamTarget

USER = {"role": "user", "content": "Hello"}


def body(**fields: Any) -> bytes:
    return json.dumps({"messages": [USER], **fields}).encode()


def rejected(raw: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(raw)
    assert info.value.status_code == 400
    return info.value


def make_target(
    name: str | None = "gpt-4o-mini",
    options: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
) -> UpstreamTarget:
    """A target compiled from a real plugin config, as the proxy gets it."""
    model: dict[str, Any] = {"provider": "openai", "options": options or {}}
    if name is not None:
        model["name"] = name
    target: dict[str, Any] = {"model": model, "route_type": "llm/v1/chat"}
    if auth is not None:
        target["auth"] = auth
    doc = {"plugins": [{"name": "ai-proxy-advanced", "config": {"targets": [target]}}]}
    gateway = compile_gateway(parse_document(json.dumps(doc), {}))
    return gateway.balancers[0].targets[0]


def sent(
    raw: bytes | dict[str, Any],
    target: UpstreamTarget,
    *,
    stream: bool = False,
    want_usage: bool = False,
) -> dict[str, Any]:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    parsed = parse_chat_request(data)
    out: dict[str, Any] = json.loads(
        upstream_body(parsed, target, stream=stream, want_usage=want_usage)
    )
    return out


# ------------------------------------------------------------------------ rejection


@pytest.mark.parametrize("raw", [b"", b"{", b'{"messages": [}', b"not json", b"\xff\xfe"])
def test_invalid_json_is_rejected_with_kongs_message(raw: bytes) -> None:
    assert rejected(raw).message.startswith(BAD_JSON)


@pytest.mark.parametrize(
    "raw",
    [
        # Found by the fuzz test: both used to escape as a 500. msgspec words (and, by
        # release, even types) these errors differently; the 400 and Kong's text are ours.
        b'{"messages": [{"role": "user", "content": "\x80"}]}',
        b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_invalid_utf8_and_deep_nesting_are_bad_json(raw: bytes) -> None:
    assert rejected(raw).message.startswith(BAD_JSON)


@pytest.mark.parametrize("raw", [b"[]", b'[{"role": "user"}]', b'"hi"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_rejected(raw: bytes) -> None:
    error = rejected(raw)
    assert error.message.startswith(BAD_JSON)
    assert "JSON object" in error.message


@pytest.mark.parametrize(
    "raw",
    [b"{}", b'{"model": "gpt-4o"}', b'{"messages": []}', b'{"messages": null}', b'{"prompt": "x"}'],
)
def test_missing_or_empty_messages_get_kongs_no_prompts_error(raw: bytes) -> None:
    error = rejected(raw)
    assert error.message.startswith(NO_PROMPTS)
    assert NO_PROMPTS == "request body doesn't contain valid prompts"
    assert error.param == "messages"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"messages": "Hello"}', "messages"),
        (b'{"messages": {"role": "user", "content": "Hello"}}', "messages"),
        (body(temperature="hot"), "temperature"),
        (body(temperature=True), "temperature"),
        (body(stream="yes"), "stream"),
        (body(max_tokens=1.5), "max_tokens"),
        (body(model=4), "model"),
        (body(stream_options={"include_usage": "please"}), "stream_options.include_usage"),
        (b'{"messages": [{"role": "robot", "content": "beep"}]}', "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": "a"}, 7]}', "messages[1]"),
        (b'{"messages": [{"content": "who am I"}]}', "messages[0]"),
        (b'{"messages": [{"role": "user", "content": 12}]}', "messages[0].content"),
    ],
)
def test_wrong_types_are_rejected_naming_the_param(raw: bytes, param: str) -> None:
    error = rejected(raw)
    assert error.param == param
    assert f"'{param}'" in error.message


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_content_is_required_for_prompt_roles(role: str) -> None:
    error = rejected(json.dumps({"messages": [USER, {"role": role}]}).encode())
    assert error.param == "messages[1].content"


@pytest.mark.parametrize(
    ("field", "value"), [("n", 0), ("max_tokens", 0), ("max_completion_tokens", -5)]
)
def test_counts_below_one_are_rejected(field: str, value: int) -> None:
    error = rejected(body(**{field: value}))
    assert error.param == field


def test_error_body_is_openai_shaped() -> None:
    error = rejected(body(temperature="hot"))
    document = msgspec.json.decode(error.body())
    assert document == {
        "error": {
            "message": error.message,
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_request",
        }
    }


# ------------------------------------------------------------------------ acceptance


def test_valid_body_with_content_parts_tools_and_null_assistant_content() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "cat"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a tabby cat"},
        {"role": "assistant", "content": "A tabby cat."},
    ]
    parsed = parse_chat_request(
        json.dumps(
            {
                "model": "gpt-4o",
                "messages": messages,
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": 0,
                "max_completion_tokens": 50,
                "n": 2,
            }
        ).encode()
    )
    view = parsed.view
    assert [m.role for m in view.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert view.messages[2].content is None
    assert isinstance(view.messages[1].content, list)
    assert (view.model, view.stream, view.temperature) == ("gpt-4o", True, 0.0)
    assert view.stream_options is not None
    assert view.stream_options.include_usage is True
    assert (view.max_completion_tokens, view.n) == (50, 2)
    assert parsed.raw["messages"] == messages


def test_assistant_without_content_is_accepted() -> None:
    parsed = parse_chat_request(
        json.dumps({"messages": [USER, {"role": "assistant", "tool_calls": []}]}).encode()
    )
    assert parsed.view.messages[1].content is None


# ----------------------------------------------------------------- the upstream body


def test_model_is_rewritten_to_the_targets_model() -> None:
    assert sent(body(model="whatever-the-sdk-sent"), make_target("gpt-4o-mini"))["model"] == (
        "gpt-4o-mini"
    )
    assert sent(body(), make_target("gpt-4"))["model"] == "gpt-4"


def test_model_is_kept_when_the_target_names_none() -> None:
    assert sent(body(model="gpt-4o"), make_target(None))["model"] == "gpt-4o"
    assert "model" not in sent(body(), make_target(None))


def test_options_fill_what_the_client_left_out() -> None:
    target = make_target(options={"max_tokens": 512, "temperature": 1.0, "top_p": 0.9})
    out = sent(body(), target)
    assert (out["max_tokens"], out["temperature"], out["top_p"]) == (512, 1.0, 0.9)


def test_clients_own_values_win_over_options() -> None:
    target = make_target(options={"max_tokens": 512, "temperature": 1.0, "top_p": 0.9})
    out = sent(body(max_tokens=20, temperature=0, top_p=0.1), target)
    assert (out["max_tokens"], out["temperature"], out["top_p"]) == (20, 0, 0.1)


def test_max_tokens_is_not_added_next_to_max_completion_tokens() -> None:
    target = make_target(options={"max_tokens": 512})
    out = sent(body(max_completion_tokens=64), target)
    assert out["max_completion_tokens"] == 64
    assert "max_tokens" not in out


def test_no_options_add_nothing() -> None:
    out = sent(body(), make_target())
    assert set(out) == {"messages", "model"}


def test_stream_asks_for_the_usage_chunk_and_keeps_other_stream_options() -> None:
    out = sent(
        body(stream=True, stream_options={"include_obfuscation": False}),
        make_target(),
        stream=True,
        want_usage=True,
    )
    assert out["stream"] is True
    assert out["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_stream_usage_overrides_a_client_that_turned_it_off() -> None:
    out = sent(
        body(stream=True, stream_options={"include_usage": False}),
        make_target(),
        stream=True,
        want_usage=True,
    )
    assert out["stream_options"] == {"include_usage": True}


def test_stream_options_untouched_when_usage_is_not_wanted() -> None:
    out = sent(body(stream=True), make_target(), stream=True, want_usage=False)
    assert out["stream"] is True
    assert "stream_options" not in out
    plain = sent(body(), make_target(), stream=False, want_usage=False)
    assert "stream" not in plain
    assert "stream_options" not in plain


def test_auth_body_param_is_injected_over_the_clients_value() -> None:
    target = make_target(
        auth={"param_name": "api_key", "param_value": "server-key", "param_location": "body"}
    )
    assert sent(body(), target)["api_key"] == "server-key"
    assert sent(body(api_key="client-key"), target)["api_key"] == "server-key"


def test_auth_body_param_from_the_client_is_kept_with_allow_override() -> None:
    target = make_target(
        auth={
            "param_name": "api_key",
            "param_value": "server-key",
            "param_location": "body",
            "allow_override": True,
        }
    )
    assert sent(body(api_key="client-key"), target)["api_key"] == "client-key"
    assert sent(body(), target)["api_key"] == "server-key"


def test_query_and_header_auth_never_reach_the_body() -> None:
    target = make_target(
        auth={"param_name": "api-key", "param_value": "q-key", "param_location": "query"}
    )
    assert "api-key" not in sent(body(), target)
    header_target = make_target(auth={"header_name": "Authorization", "header_value": "Bearer k"})
    assert "Bearer k" not in json.dumps(sent(body(), header_target))


def test_unknown_client_fields_pass_through_unchanged() -> None:
    extras = {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
                },
            }
        ],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "logit_bias": {"50256": -100},
        "seed": 12345678901234567890123,
        "user": "ünïcödé 用户 🚀",
        "presence_penalty": 0.30000000000000004,
        "metadata": {"nested": [None, True, 1.5e-7, {"deep": []}]},
        "service_tier": None,
    }
    messages = [USER, {"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}]
    out = sent({"messages": messages, **extras}, make_target(None))
    assert {k: out[k] for k in extras} == extras
    assert out["messages"] == messages
    assert type(out["presence_penalty"]) is float


def test_rewriting_for_one_target_leaves_the_request_intact_for_a_retry() -> None:
    parsed: ParsedRequest = parse_chat_request(
        body(model="m", stream=True, stream_options={"x": 1})
    )
    first = make_target(
        "gpt-4",
        {"max_tokens": 5},
        {"param_name": "k", "param_value": "v", "param_location": "body"},
    )
    upstream_body(parsed, first, stream=True, want_usage=True)
    second: dict[str, Any] = json.loads(
        upstream_body(parsed, make_target("gpt-4o-mini"), stream=True, want_usage=False)
    )
    assert second["model"] == "gpt-4o-mini"
    assert "k" not in second
    assert "max_tokens" not in second
    assert second["stream_options"] == {"x": 1}
    assert parsed.raw["model"] == "m"
