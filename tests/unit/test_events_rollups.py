"""What a usage event carries and what becomes of it, without Redis: its wire format,
the trace context it continues, the rollups and latency histogram it is counted in,
Kong's log record and the OpenTelemetry spans built from it, and the aggregator's
settings and exporter choice from the environment."""

from __future__ import annotations

import json
import socket

import msgspec
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tokenlb_aggregator.settings import AggregatorSettings, aggregator_settings
from tokenlb_aggregator.spans import event_spans, exporter_from_env
from tokenlb_proxy.events import UsageEvent, decode_event, encode_event
from tokenlb_proxy.rollups import (
    MinuteRollup,
    TargetRollup,
    bucket_upper_ms,
    latency_bucket,
    merge_rollups,
    parse_rollup_hash,
)
from tokenlb_proxy.settings import SettingsError
from tokenlb_proxy.stats_log import kong_log_line, kong_log_record
from tokenlb_proxy.tracecontext import TraceContext, new_span_id, parse_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
REQUEST_SPAN = "a1b2c3d4e5f60718"
ATTEMPT_SPAN = "1122334455667788"
START_MS = 1_700_000_000_123.25


def usage_event(**changes: object) -> UsageEvent:
    values: dict[str, object] = {
        "balancer": "plugin-1234",
        "target": "3f2a9c1b0d4e",
        "target_label": "openai/gpt-4o-mini",
        "provider": "openai",
        "request_model": "gpt-4o",
        "response_model": "gpt-4o-mini-2024-07-18",
        "algorithm": "lowest-usage",
        "strategy": "total-tokens",
        "score": 1234.5,
        "attempt": 1,
        "final": True,
        "status": 200,
        "stream": True,
        "start_ms": START_MS,
        "end_ms": START_MS + 812.5,
        "upstream_ms": 812.5,
        "ttft_ms": 95.4,
        "prompt_tokens": 120,
        "completion_tokens": 25,
        "cost": 0.00042,
        "trace_id": TRACE_ID,
        "span_id": ATTEMPT_SPAN,
        "request_span_id": REQUEST_SPAN,
        "client_span_id": CLIENT_SPAN,
        "request_start_ms": START_MS - 40.0,
        "log_statistics": True,
    }
    values.update(changes)
    return msgspec.convert(values, UsageEvent)


# Usage events ----------------------------------------------------------------------------


def test_event_round_trips_through_its_wire_format() -> None:
    event = usage_event(request_payload='{"messages":[]}', response_payload="{}", error="")

    data = encode_event(event)

    assert decode_event(data) == event
    assert decode_event(data.decode()) == event  # as redis-py hands it back
    # Defaults are left out: events stay small in the stream.
    assert b'"error"' not in data
    assert json.loads(data)["target"] == "3f2a9c1b0d4e"


def test_minimal_event_round_trips_with_defaults() -> None:
    event = UsageEvent(
        balancer="b",
        target="t",
        target_label="p/m",
        provider="p",
        algorithm="round-robin",
        strategy="cost",
        start_ms=1.0,
        end_ms=2.0,
        trace_id=TRACE_ID,
        span_id=ATTEMPT_SPAN,
        request_span_id=REQUEST_SPAN,
        request_start_ms=0.5,
    )

    decoded = decode_event(encode_event(event))

    assert decoded == event
    assert (decoded.final, decoded.failed, decoded.client_span_id) == (True, False, None)
    assert usage_event(error="timeout").failed


@pytest.mark.parametrize(
    "junk",
    [
        b"not json",
        b"",
        b"[]",
        b"{}",
        b'{"balancer": "b"}',
        encode_event(usage_event()).replace(b'"prompt_tokens":120', b'"prompt_tokens":"120"'),
        encode_event(usage_event()).replace(b'"stream":true', b'"stream":"yes"'),
    ],
)
def test_junk_is_rejected(junk: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_event(junk)


# Trace context ---------------------------------------------------------------------------


def test_valid_traceparent_is_continued() -> None:
    context = parse_traceparent(f"00-{TRACE_ID}-{CLIENT_SPAN}-01")

    assert (context.trace_id, context.parent_span_id, context.sampled) == (
        TRACE_ID,
        CLIENT_SPAN,
        True,
    )
    assert context.traceparent(REQUEST_SPAN) == f"00-{TRACE_ID}-{REQUEST_SPAN}-01"


@pytest.mark.parametrize(("flags", "sampled"), [("00", False), ("01", True), ("03", True)])
def test_sampled_flag_is_kept(flags: str, sampled: bool) -> None:
    context = parse_traceparent(f"00-{TRACE_ID}-{CLIENT_SPAN}-{flags}")

    assert context.sampled is sampled
    assert context.parent_span_id == CLIENT_SPAN
    assert context.traceparent(REQUEST_SPAN).endswith("-01" if sampled else "-00")


def test_uppercase_and_padded_traceparent_is_accepted() -> None:
    context = parse_traceparent(f"  00-{TRACE_ID.upper()}-{CLIENT_SPAN.upper()}-01 ")

    assert (context.trace_id, context.parent_span_id) == (TRACE_ID, CLIENT_SPAN)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"01-{TRACE_ID}-{CLIENT_SPAN}-01",  # unknown version
        f"ff-{TRACE_ID}-{CLIENT_SPAN}-01",
        f"00-{TRACE_ID[:-1]}-{CLIENT_SPAN}-01",  # short trace id
        f"00-{TRACE_ID}0-{CLIENT_SPAN}-01",  # long trace id
        f"00-{TRACE_ID}-{CLIENT_SPAN[:-1]}-01",
        f"00-{TRACE_ID}-{CLIENT_SPAN}-1",
        f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra",
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID.replace('4', 'g')}-{CLIENT_SPAN}-01",
    ],
)
def test_bad_traceparent_starts_a_new_sampled_trace(header: str | None) -> None:
    context = parse_traceparent(header)

    assert context.parent_span_id is None
    assert context.sampled is True
    assert len(context.trace_id) == 32
    assert int(context.trace_id, 16) != 0
    assert context.trace_id != TRACE_ID
    assert parse_traceparent(header).trace_id != context.trace_id  # a new one each time


def test_new_span_ids_are_random_hex() -> None:
    ids = {new_span_id() for _ in range(100)}

    assert len(ids) == 100
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert (
        TraceContext(TRACE_ID, None, False).traceparent("ab" * 8) == f"00-{TRACE_ID}-{'ab' * 8}-00"
    )


# Latency histogram and rollups -----------------------------------------------------------


LATENCIES = sorted(
    {0.0, 0.3, 1.0, 1.01, 2.0, 2**0.125, 9.99, 10.0, 40.0, 99.5, 100.0, 250.0, 256.0, 257.0}
    | {1.07**i for i in range(300)}
)


def test_latency_bucket_is_monotonic() -> None:
    buckets = [latency_bucket(ms) for ms in LATENCIES]

    assert buckets == sorted(buckets)
    assert latency_bucket(0.0) == latency_bucket(1.0) == 0
    assert latency_bucket(1_000_000.0) > latency_bucket(1_000.0) > latency_bucket(1.5)


def test_bucket_upper_bound_is_within_a_ninth_above_the_latency() -> None:
    # 8 buckets per doubling: the bound is at most 2^(1/8) (~1.0905) times the latency.
    for ms in LATENCIES:
        upper = bucket_upper_ms(latency_bucket(ms))
        assert upper >= ms, ms
        assert upper <= max(ms, 1.0) * 2 ** (1 / 8) * (1 + 1e-12), ms
    assert bucket_upper_ms(latency_bucket(256.0)) == 256.0
    assert bucket_upper_ms(latency_bucket(100.0)) == pytest.approx(107.63, abs=0.01)


def test_latency_percentile_on_known_data() -> None:
    rollup = TargetRollup()
    assert rollup.latency_percentile(0.5) is None
    for ms in [10.0] * 50 + [100.0] * 45 + [1000.0] * 5:
        rollup.add_request(
            failed=False, prompt_tokens=1, completion_tokens=2, cost=0.5, latency_ms=ms
        )

    assert rollup.latency_percentile(0.0) == pytest.approx(10.37, abs=0.01)
    assert rollup.latency_percentile(0.50) == pytest.approx(10.37, abs=0.01)
    assert rollup.latency_percentile(0.51) == pytest.approx(107.63, abs=0.01)
    assert rollup.latency_percentile(0.95) == pytest.approx(107.63, abs=0.01)
    assert rollup.latency_percentile(0.96) == 1024.0
    assert rollup.latency_percentile(1.0) == 1024.0
    summary = rollup.as_dict()
    assert summary["requests"] == 100
    assert summary["total_tokens"] == 300
    assert summary["cost"] == pytest.approx(50.0)
    assert summary["latency_p50_ms"] == pytest.approx(10.37, abs=0.01)
    assert summary["latency_p95_ms"] == pytest.approx(107.63, abs=0.01)


def test_parse_rollup_hash_reads_every_field() -> None:
    fields = {
        "t1:requests": "3",
        "t1:errors": "1",
        "t1:prompt_tokens": "30",
        "t1:completion_tokens": "12",
        "t1:cost": "2.6000000000000001e-06",
        "t1:lat:54": "2",
        "t1:lat:64": "1",
        "t2:requests": "1",
        "t2:prompt_tokens": "5",
        "t2:completion_tokens": "0",
        "t2:cost": "0",
        "t2:lat:0": "1",
        "t2:unknown_field": "99",
    }

    targets = parse_rollup_hash(fields)

    assert set(targets) == {"t1", "t2"}
    t1, t2 = targets["t1"], targets["t2"]
    assert (t1.requests, t1.errors, t1.prompt_tokens, t1.completion_tokens) == (3, 1, 30, 12)
    assert t1.total_tokens == 42
    assert t1.cost == pytest.approx(2.6e-06)
    assert t1.latency == {54: 2, 64: 1}
    assert (t2.requests, t2.errors, t2.total_tokens, t2.latency) == (1, 0, 5, {0: 1})


def test_merge_rollups_sums_minutes_without_touching_them() -> None:
    first = MinuteRollup(
        minute=100, targets=parse_rollup_hash({"a:requests": "2", "a:cost": "0.5", "a:lat:8": "2"})
    )
    second = MinuteRollup(
        minute=101,
        targets=parse_rollup_hash(
            {"a:requests": "1", "a:errors": "1", "a:lat:8": "1", "a:lat:16": "0", "b:requests": "4"}
        ),
    )

    totals = merge_rollups([first, second])

    assert (totals["a"].requests, totals["a"].errors, totals["a"].cost) == (3, 1, 0.5)
    assert totals["a"].latency == {8: 3, 16: 0}
    assert totals["b"].requests == 4
    # The minutes are the store's own (LocalStore hands out its state): left as they were.
    assert first.targets["a"].requests == 2
    assert first.targets["a"].latency == {8: 2}
    assert merge_rollups([]) == {}


# Kong's log record -----------------------------------------------------------------------


def test_kong_log_record_uses_kongs_names() -> None:
    event = usage_event()

    record = kong_log_record(event)

    assert record == {
        "ai": {
            "proxy": {
                "meta": {
                    "plugin_id": "plugin-1234",
                    "provider_name": "openai",
                    "request_model": "gpt-4o",
                    "response_model": "gpt-4o-mini-2024-07-18",
                    "llm_latency": 812,
                },
                "usage": {
                    "prompt_tokens": 120,
                    "completion_tokens": 25,
                    "total_tokens": 145,
                    "cost": 0.00042,
                    "time_per_token": 32.5,
                    "time_to_first_token": 95,
                },
            }
        }
    }
    assert json.loads(kong_log_line(event)) == record


def test_kong_log_record_without_completion_or_first_token() -> None:
    usage = kong_log_record(usage_event(completion_tokens=0, ttft_ms=None, error="http_500"))["ai"][
        "proxy"
    ]["usage"]

    assert usage["time_per_token"] == 0
    assert usage["time_to_first_token"] is None
    assert usage["total_tokens"] == 120


@pytest.mark.parametrize(
    ("request_payload", "response_payload"),
    [('{"messages": []}', '{"choices": []}'), ('{"messages": []}', None), (None, "{}")],
)
def test_kong_log_record_has_payloads_only_when_logged(
    request_payload: str | None, response_payload: str | None
) -> None:
    event = usage_event(request_payload=request_payload, response_payload=response_payload)

    proxy = kong_log_record(event)["ai"]["proxy"]

    assert proxy["payload"] == {"request": request_payload, "response": response_payload}
    assert "payload" not in kong_log_record(usage_event())["ai"]["proxy"]


# OpenTelemetry spans ---------------------------------------------------------------------

RESOURCE = Resource.create({"service.name": "tokenlb-tests"})


def ns(ms: float) -> int:
    return round(ms * 1_000_000)


def by_kind(spans: list[ReadableSpan]) -> dict[SpanKind, ReadableSpan]:
    return {span.kind: span for span in spans}


def test_failed_over_attempt_is_one_client_span_under_the_request_span() -> None:
    event = usage_event(final=False, error="http_503", status=503, response_model=None)

    spans = event_spans(event, RESOURCE, "https://api.example.com:8443/v1/chat/completions")

    assert len(spans) == 1
    (span,) = spans
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.CLIENT
    assert span.context is not None
    assert span.context.trace_id == int(TRACE_ID, 16)
    assert span.context.span_id == int(ATTEMPT_SPAN, 16)
    assert span.parent is not None
    assert span.parent.span_id == int(REQUEST_SPAN, 16)
    assert span.parent.trace_id == int(TRACE_ID, 16)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "http_503"
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "http_503"
    assert attributes["http.response.status_code"] == 503
    assert attributes["server.address"] == "api.example.com"
    assert attributes["server.port"] == 8443
    assert "gen_ai.response.model" not in attributes
    assert span.resource.attributes["service.name"] == "tokenlb-tests"


def test_final_attempt_adds_the_server_span_under_the_clients_span() -> None:
    event = usage_event()

    spans = by_kind(event_spans(event, RESOURCE))

    assert set(spans) == {SpanKind.CLIENT, SpanKind.SERVER}
    attempt, request = spans[SpanKind.CLIENT], spans[SpanKind.SERVER]
    assert request.name == "tokenlb chat"
    assert request.context is not None
    assert request.context.span_id == int(REQUEST_SPAN, 16)
    assert request.context.trace_id == int(TRACE_ID, 16)
    assert attempt.parent is not None
    assert attempt.parent.span_id == request.context.span_id
    assert request.parent is not None
    assert request.parent.span_id == int(CLIENT_SPAN, 16)
    assert request.parent.is_remote
    # Real times, to the microsecond: float ms -> integer ns.
    assert attempt.start_time is not None
    assert attempt.end_time is not None
    assert request.start_time is not None
    assert request.end_time is not None
    assert abs(attempt.start_time - ns(event.start_ms)) < 1_000
    assert abs(attempt.end_time - ns(event.end_ms)) < 1_000
    assert abs(request.start_time - ns(event.request_start_ms)) < 1_000
    assert request.end_time == attempt.end_time
    assert attempt.end_time - attempt.start_time == pytest.approx(812_500_000, abs=1_000)
    assert attempt.status.status_code is StatusCode.UNSET
    assert request.status.status_code is StatusCode.UNSET


def test_request_span_is_a_root_without_a_client_traceparent() -> None:
    spans = by_kind(event_spans(usage_event(client_span_id=None), RESOURCE))

    assert spans[SpanKind.SERVER].parent is None
    assert spans[SpanKind.CLIENT].parent is not None


def test_spans_carry_genai_and_tokenlb_attributes() -> None:
    spans = by_kind(event_spans(usage_event(), RESOURCE))
    attempt = dict(spans[SpanKind.CLIENT].attributes or {})
    request = dict(spans[SpanKind.SERVER].attributes or {})

    genai = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 25,
        "tokenlb.target": "openai/gpt-4o-mini",
        "tokenlb.algorithm": "lowest-usage",
        "tokenlb.usage_score": 1234.5,
        "tokenlb.retries": 1,
        "tokenlb.balancer": "plugin-1234",
        "tokenlb.cost": 0.00042,
    }
    assert attempt.items() >= genai.items()
    assert request.items() >= genai.items()
    # The attempt asked the target for its own model; the client asked for gpt-4o.
    assert attempt["gen_ai.request.model"] == "gpt-4o-mini"
    assert request["gen_ai.request.model"] == "gpt-4o"
    assert attempt["tokenlb.target_id"] == "3f2a9c1b0d4e"
    assert attempt["tokenlb.tokens_count_strategy"] == "total-tokens"
    assert attempt["tokenlb.time_to_first_token_ms"] == 95.4
    assert attempt["tokenlb.upstream_latency_ms"] == 812.5
    assert attempt["tokenlb.stream"] is True
    for attributes in (attempt, request):
        assert "error.type" not in attributes
        assert not any(name.startswith("gen_ai.input") for name in attributes)
        assert not any(name.startswith("gen_ai.output") for name in attributes)


def test_events_from_a_redis_outage_mark_their_spans_degraded() -> None:
    normal = by_kind(event_spans(usage_event(), RESOURCE))
    degraded = by_kind(event_spans(usage_event(degraded=True), RESOURCE))
    for kind in (SpanKind.CLIENT, SpanKind.SERVER):
        assert "tokenlb.degraded" not in dict(normal[kind].attributes or {})
        assert dict(degraded[kind].attributes or {})["tokenlb.degraded"] is True
    # Normal events do not carry the flag at all (the stream stays as it was).
    assert b"degraded" not in encode_event(usage_event())
    assert decode_event(encode_event(usage_event(degraded=True))).degraded is True


def test_payloads_become_span_attributes_only_when_logged() -> None:
    event = usage_event(request_payload='{"messages":[{"role":"user"}]}', response_payload="{}")

    attempt = dict(by_kind(event_spans(event, RESOURCE))[SpanKind.CLIENT].attributes or {})

    assert attempt["gen_ai.input.messages"] == '{"messages":[{"role":"user"}]}'
    assert attempt["gen_ai.output.messages"] == "{}"


def test_failed_final_attempt_marks_the_request_failed() -> None:
    event = usage_event(error="timeout", status=0, prompt_tokens=0, completion_tokens=0)

    spans = by_kind(event_spans(event, RESOURCE))

    for span in spans.values():
        assert span.status.status_code is StatusCode.ERROR
        assert dict(span.attributes or {})["error.type"] == "timeout"
    assert "http.response.status_code" not in dict(spans[SpanKind.CLIENT].attributes or {})


# Exporter and settings from the environment ----------------------------------------------


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_exporter_without_otel_variables(no_otel_env: pytest.MonkeyPatch) -> None:
    assert exporter_from_env() is None
    assert exporter_from_env({}) is None
    assert exporter_from_env({"OTEL_SERVICE_NAME": "x"}) is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
        {"OTEL_TRACES_EXPORTER": " NONE ", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/x"},
    ],
)
def test_no_exporter_when_traces_are_turned_off(env: dict[str, str]) -> None:
    assert exporter_from_env(env) is None


def test_console_exporter() -> None:
    exporter = exporter_from_env({"OTEL_TRACES_EXPORTER": "Console"})

    assert isinstance(exporter, ConsoleSpanExporter)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318", "http://collector:4318/v1/traces"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4318/v1/traces", None),
    ],
)
def test_otlp_exporter_with_an_endpoint(
    no_otel_env: pytest.MonkeyPatch, variable: str, value: str, expected: str | None
) -> None:
    no_otel_env.setenv(variable, value)

    exporter = exporter_from_env()

    assert isinstance(exporter, OTLPSpanExporter)
    assert exporter._endpoint == (expected or value)


def test_otlp_exporter_when_asked_for_by_name(no_otel_env: pytest.MonkeyPatch) -> None:
    exporter = exporter_from_env({"OTEL_TRACES_EXPORTER": "otlp"})

    assert isinstance(exporter, OTLPSpanExporter)


def test_aggregator_settings_defaults() -> None:
    settings = aggregator_settings({})

    assert settings == AggregatorSettings(
        redis_url="", name=settings.name, log_sink="stdout", claim_idle_ms=15_000
    )
    assert settings.name.startswith(socket.gethostname() + "-")
    assert settings.group == "tokenlb-aggregators"


def test_aggregator_settings_from_environment() -> None:
    env = {
        "TOKENLB_REDIS_URL": "redis://redis:6379/0",
        "TOKENLB_LOG_SINK": "/var/log/kong.log",
        "TOKENLB_AGGREGATOR_NAME": "agg-7",
        "TOKENLB_AGGREGATOR_CLAIM_IDLE_MS": "2500",
        "TOKENLB_AGGREGATOR_BATCH_SIZE": "64",
        "TOKENLB_AGGREGATOR_ROLL_MIN_HALF_LIVES": "0.5",
        "TOKENLB_AGGREGATOR_ROLLUP_RETENTION_S": "3600",
        "TOKENLB_AGGREGATOR_HEARTBEAT_TTL_S": "30",
    }

    settings = aggregator_settings(env)

    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.log_sink == "/var/log/kong.log"
    assert settings.name == "agg-7"
    assert settings.claim_idle_ms == 2500
    assert settings.batch_size == 64
    assert settings.roll_min_half_lives == 0.5
    assert settings.rollup_retention_s == 3600
    assert settings.heartbeat_ttl_s == 30
    assert isinstance(settings.claim_idle_ms, int)


def test_explicit_settings_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "TOKENLB_REDIS_URL": "redis://from-env",
        "TOKENLB_AGGREGATOR_CLAIM_IDLE_MS": "2500",
        "TOKENLB_AGGREGATOR_LOG_SINK": "stderr",
    }

    settings = aggregator_settings(env, claim_idle_ms=99, redis_url=None, log_sink="none")

    assert settings.claim_idle_ms == 99
    assert settings.redis_url == "redis://from-env"  # None means "not given on the CLI"
    assert settings.log_sink == "none"
    # Without an explicit mapping, the process environment is read.
    monkeypatch.setenv("TOKENLB_AGGREGATOR_TRIM_INTERVAL_MS", "777")
    assert aggregator_settings().trim_interval_ms == 777
    assert aggregator_settings({}).trim_interval_ms == 2_000


def test_bad_environment_value_is_an_error() -> None:
    with pytest.raises(SettingsError, match=r"^TOKENLB_AGGREGATOR_CLAIM_IDLE_MS='soon': "):
        aggregator_settings({"TOKENLB_AGGREGATOR_CLAIM_IDLE_MS": "soon"})
