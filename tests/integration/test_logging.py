"""Process logs: ``TOKENLB_LOG_FORMAT`` and ``TOKENLB_LOG_LEVEL`` on real ``tokenlb``
processes, read back from their output."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port, start_proxy, tokenlb_command
from tokenlb_proxy.logs import JsonFormatter
from tokenlb_proxy.settings import SettingsError, log_settings_from_env

CONFIG = """\
_format_version: "3.0"
plugins:
- name: ai-proxy-advanced
  config:
    targets:
    - route_type: llm/v1/chat
      model: {provider: openai, name: gpt-4o-mini}
      auth: {header_name: Authorization, header_value: Bearer sk-logging-test-secret}
"""
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "kong.yaml"
    path.write_text(CONFIG)
    return path


def run_and_stop(log_dir: Path, config: Path, env: dict[str, str]) -> str:
    """Start a replica whose Redis is unreachable (so it warns), stop it, return its output."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    process, _, _ = start_proxy(log_dir, config, redis_url=dead_redis, env=env)
    process.stop()
    return process.log_path.read_text()


def test_json_lines_with_ts_level_logger_message(tmp_path: Path, config: Path) -> None:
    output = run_and_stop(tmp_path, config, {"TOKENLB_LOG_FORMAT": "json"})
    records = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert records, output
    for record in records:
        assert set(record) <= {"ts", "level", "logger", "message", "exception"}, record
        assert TS.match(record["ts"]), record
    started = [r for r in records if r["message"].startswith("tokenlb proxy on http://")]
    assert [(r["level"], r["logger"]) for r in started] == [("INFO", "tokenlb")]
    warnings = [r for r in records if "Redis is unreachable" in r["message"]]
    assert warnings
    assert warnings[0]["level"] == "WARNING"
    assert "sk-logging-test-secret" not in output


def test_level_from_environment_hides_info(tmp_path: Path, config: Path) -> None:
    env = {"TOKENLB_LOG_FORMAT": "json", "TOKENLB_LOG_LEVEL": "warning"}
    records = [json.loads(line) for line in run_and_stop(tmp_path, config, env).splitlines()]
    assert {r["level"] for r in records} <= {"WARNING", "ERROR", "CRITICAL"}
    assert any("Redis is unreachable" in r["message"] for r in records)


def test_text_is_the_default(tmp_path: Path, config: Path) -> None:
    output = run_and_stop(tmp_path, config, {})
    assert re.search(r"^\S+ \S+ INFO tokenlb: tokenlb proxy on http://", output, re.M), output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


@pytest.mark.parametrize(
    ("variable", "value"), [("TOKENLB_LOG_FORMAT", "xml"), ("TOKENLB_LOG_LEVEL", "loud")]
)
def test_unusable_values_are_refused_by_name(config: Path, variable: str, value: str) -> None:
    result = subprocess.run(
        tokenlb_command("proxy", "--config", str(config), "--port", str(free_port())),
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert variable in result.stderr
    assert value in result.stderr.lower()


def test_settings_read_the_environment_only_there() -> None:
    assert log_settings_from_env({}).format == "text"
    assert log_settings_from_env({}, default_level="WARNING").level == "WARNING"
    settings = log_settings_from_env({"TOKENLB_LOG_FORMAT": "JSON", "TOKENLB_LOG_LEVEL": "debug"})
    assert (settings.format, settings.level) == ("json", "DEBUG")
    with pytest.raises(SettingsError, match="TOKENLB_LOG_FORMAT"):
        log_settings_from_env({"TOKENLB_LOG_FORMAT": "yaml"})


def test_json_formatter_keeps_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "tokenlb.x", logging.ERROR, __file__, 1, "failed %s", ("twice",), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed twice"
    assert line["level"] == "ERROR"
    assert line["logger"] == "tokenlb.x"
    assert "RuntimeError: boom" in line["exception"]
