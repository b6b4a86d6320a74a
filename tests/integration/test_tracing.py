"""Traces: the proxy continues the client's W3C trace, the aggregator exports the spans.

Real processes (redis-server, mock upstream, proxy, aggregator) and a real OTLP/HTTP
receiver that decodes the protobuf the aggregator's exporter sends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.otlp_receiver import OtlpReceiver, otlp_receiver
from tests.support import (
    ManagedProcess,
    free_port,
    start_mock,
    start_proxy,
    tokenlb_command,
)

API_KEY = "sk-tracing-secret-0123456789"
PROMPT = "a prompt that must never appear in a span"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@dataclass
class Stack:
    proxy_url: str
    admin_url: str
    receiver: OtlpReceiver
    sink: Path
    aggregator: ManagedProcess
    proxy: ManagedProcess


def _config(path: Path, mock_port: int) -> Path:
    live = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    dead = f"http://127.0.0.1:{free_port()}/v1/chat/completions"

    def target(model: str, url: str) -> str:
        return f"""
    - route_type: llm/v1/chat
      model: {{provider: openai, name: {model}, options: {{upstream_url: "{url}"}}}}
      auth: {{header_name: Authorization, header_value: "Bearer {API_KEY}"}}
      logging: {{log_statistics: true}}"""

    def plugin(route: str, targets: str) -> str:
        return f"""
- name: ai-proxy-advanced
  route: {route}
  config:
    balancer: {{algorithm: lowest-usage, tokens_count_strategy: total-tokens}}
    targets:{targets}"""

    path.write_text(
        f"""_format_version: "3.0"
routes:
- name: chat
  paths: [/chat]
- name: failover
  paths: [/failover]
plugins:{plugin("chat", target("gpt-4", live) + target("gpt-4o-mini", live))}
{plugin("failover", target("dead-model", dead) + target("gpt-4o-mini", live))}
"""
    )
    return path


@pytest.fixture
def stack(redis_url: str, tmp_path: Path, process_logs: Path) -> Iterator[Stack]:
    processes: list[ManagedProcess] = []
    with otlp_receiver() as receiver:
        try:
            mock, mock_port = start_mock(process_logs, "--require-key", API_KEY)
            processes.append(mock)
            config = _config(tmp_path / "kong.yaml", mock_port)
            proxy, port, admin_port = start_proxy(process_logs, config, redis_url=redis_url)
            processes.append(proxy)
            sink = tmp_path / "kong-log.jsonl"
            aggregator = ManagedProcess(
                "aggregator-tracing",
                tokenlb_command("aggregator", "--redis-url", redis_url, "--log-sink", str(sink)),
                process_logs,
                env={
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                    "OTEL_SERVICE_NAME": "tokenlb-test",
                    "OTEL_BSP_SCHEDULE_DELAY": "100",
                    "TOKENLB_AGGREGATOR_DISCOVER_INTERVAL_MS": "100",
                },
            )
            processes.append(aggregator)
            yield Stack(
                proxy_url=f"http://127.0.0.1:{port}",
                admin_url=f"http://127.0.0.1:{admin_port}",
                receiver=receiver,
                sink=sink,
                aggregator=aggregator,
                proxy=proxy,
            )
        finally:
            for proc in reversed(processes):
                proc.stop()


def _client(stack: Stack, route: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.proxy_url}/{route}/v1", api_key="client-key", max_retries=0
    )


def _traceparent(trace_id: str = CLIENT_TRACE, span_id: str = CLIENT_SPAN) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{span_id}-01"}


def _wait_for_spans(receiver: OtlpReceiver, trace_id: str, count: int) -> list[Span]:
    deadline = time.monotonic() + 30  # shared 2-core machines can be slow
    while time.monotonic() < deadline:
        spans = [s for _, s in receiver.snapshot() if s.trace_id.hex() == trace_id]
        if len(spans) >= count:
            return spans
        time.sleep(0.05)
    raise AssertionError(f"expected {count} spans of trace {trace_id}, got {len(spans)}")


def _attrs(span: Span) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in span.attributes:
        value = attribute.value
        kind = value.WhichOneof("value")
        values[attribute.key] = getattr(value, kind) if kind else None
    return values


def _response_span(headers: httpx.Headers) -> tuple[str, str]:
    _, trace_id, span_id, _ = headers["traceparent"].split("-")
    return trace_id, span_id


def test_spans_continue_the_client_trace(stack: Stack) -> None:
    started_ns = time.time_ns()
    with _client(stack, "chat") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers=_traceparent(),
        )
    finished_ns = time.time_ns()
    completion = raw.parse()
    trace_id, gateway_span = _response_span(raw.headers)
    assert trace_id == CLIENT_TRACE  # the gateway answers inside the client's trace

    spans = _wait_for_spans(stack.receiver, CLIENT_TRACE, 2)
    assert len(spans) == 2
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    client_span = next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT)
    assert server.span_id.hex() == gateway_span
    assert server.parent_span_id.hex() == CLIENT_SPAN
    assert client_span.parent_span_id.hex() == gateway_span
    assert client_span.name == "chat gpt-4"
    for span in spans:
        assert started_ns <= span.start_time_unix_nano <= span.end_time_unix_nano <= finished_ns
    assert server.start_time_unix_nano <= client_span.start_time_unix_nano

    attributes = _attrs(client_span)
    assert completion.usage is not None
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4"
    assert attributes["gen_ai.response.model"] == "gpt-4"
    assert attributes["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert attributes["tokenlb.target"] == "openai/gpt-4"
    assert attributes["tokenlb.algorithm"] == "lowest-usage"
    assert isinstance(attributes["tokenlb.usage_score"], float)
    assert attributes["tokenlb.retries"] == 0
    assert attributes["http.response.status_code"] == 200
    assert float(str(attributes["tokenlb.upstream_latency_ms"])) > 0
    server_attributes = _attrs(server)
    assert server_attributes["gen_ai.request.model"] == "gpt-4"
    assert server_attributes["tokenlb.retries"] == 0
    assert {service for service, _ in stack.receiver.snapshot()} == {"tokenlb-test"}


def test_stream_span_has_time_to_first_token(stack: Stack) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    with _client(stack, "chat") as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            extra_headers=_traceparent(trace_id),
        )
        assert len(list(stream)) > 1
    spans = _wait_for_spans(stack.receiver, trace_id, 2)
    attempt = _attrs(next(s for s in spans if s.kind == Span.SPAN_KIND_CLIENT))
    assert attempt["tokenlb.stream"] is True
    ttft = float(str(attempt["tokenlb.time_to_first_token_ms"]))
    assert 0 < ttft <= float(str(attempt["tokenlb.upstream_latency_ms"]))
    assert int(str(attempt["gen_ai.usage.output_tokens"])) > 0


def test_failover_shows_each_attempt(stack: Stack) -> None:
    trace_id = "6bf92f3577b34da6a3ce929d0e0e4736"
    with _client(stack, "failover") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="any",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers=_traceparent(trace_id),
        )
    assert raw.parse().model == "gpt-4o-mini"
    spans = _wait_for_spans(stack.receiver, trace_id, 3)
    assert len(spans) == 3
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    attempts = sorted(
        (s for s in spans if s.kind == Span.SPAN_KIND_CLIENT),
        key=lambda s: s.start_time_unix_nano,
    )
    failed, served = attempts
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    assert _attrs(failed)["error.type"] == "error"
    assert _attrs(failed)["tokenlb.target"] == "openai/dead-model"
    assert _attrs(failed)["tokenlb.retries"] == 0
    assert _attrs(served)["tokenlb.retries"] == 1
    assert _attrs(server)["tokenlb.retries"] == 1
    assert all(a.parent_span_id == server.span_id for a in attempts)
    assert failed.end_time_unix_nano <= served.start_time_unix_nano


def test_trace_started_by_the_gateway_and_nothing_secret_exported(stack: Stack) -> None:
    with _client(stack, "chat") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        )
    trace_id, gateway_span = _response_span(raw.headers)
    assert trace_id != CLIENT_TRACE
    assert len(trace_id) == 32
    spans = _wait_for_spans(stack.receiver, trace_id, 2)
    server = next(s for s in spans if s.kind == Span.SPAN_KIND_SERVER)
    assert server.span_id.hex() == gateway_span
    assert server.parent_span_id == b""  # a root: the client sent no traceparent

    # The aggregator caught up, says so, and its exports carry no key and no prompt.
    deadline = time.monotonic() + 30  # shared 2-core machines can be slow
    while time.monotonic() < deadline:
        health = httpx.get(f"{stack.admin_url}/status", timeout=10).json()["aggregators"]
        # The heartbeat (every 2 s) must also have reported the work done.
        caught_up = health["lag"] == 0 and health["pending"] == 0
        if caught_up and health["alive"] and health["alive"][0]["applied"] >= 1:
            break
        time.sleep(0.1)
    assert health["alive"][0]["applied"] >= 1
    assert (health["lag"], health["pending"]) == (0, 0)
    exported = b"".join(stack.receiver.raw_bodies)
    assert API_KEY.encode() not in exported
    assert PROMPT.encode() not in exported
    lines = [json.loads(line) for line in stack.sink.read_text().splitlines()]
    assert lines
    assert all("payload" not in line["ai"]["proxy"] for line in lines)
    for text in (stack.aggregator.output(), stack.proxy.output(), stack.sink.read_text()):
        assert API_KEY not in text
