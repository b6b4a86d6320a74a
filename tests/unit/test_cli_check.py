"""``tokenlb check FILE``, run as a user runs it: a separate process, real environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import REPO, tokenlb_command

SEED = REPO / "tests" / "data" / "seed"
KEY = "sk-cli-check-9b8a7c6d5e4f"


def check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECK_")}
    source = str(REPO / "services" / "proxy")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), source) if p)
    env["DECK_OPENAI_API_KEY"] = KEY
    return subprocess.run(
        tokenlb_command("check", str(path)),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_valid_file_exits_0_and_summarises_the_balancer() -> None:
    result = check(SEED / "kong-global.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("kong-global.yaml: OK (1 route(s), 1 balancer(s))")
    assert lines[1].strip() == (
        "balancer global: lowest-usage, prompt-tokens: "
        "openai/gpt-4 (weight 100), openai/gpt-4o-mini (weight 100)"
    )
    assert KEY not in result.stdout + result.stderr


def test_broken_file_exits_1_and_lists_every_error_with_its_path(tmp_path: Path) -> None:
    text = (SEED / "kong-service.yaml").read_text()
    text = text.replace("algorithm: lowest-usage", "algorithm: semantic")
    text = text.replace("tokens_count_strategy: prompt-tokens", "tokens_count_strategy: cost")
    text = text.replace("service: openai-chat", "service: no-such-service", 1)
    broken = tmp_path / "broken.yaml"
    broken.write_text(text)

    result = check(broken)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{broken}: 8 error(s)"
    assert lines[1] == "  plugins[0].service: no service 'no-such-service'"
    # The plugin that could not be placed still has its own problems reported.
    paths = [line.strip().split(": ", 1)[0] for line in lines[1:]]
    config = "plugins[0].config"
    assert paths == [
        "plugins[0].service",
        f"{config}.balancer.algorithm",
        *(
            f"{config}.targets[{i}].{field}"
            for i in (0, 1)
            for field in (
                "model.options.input_cost",
                "model.options.output_cost",
                "logging.log_statistics",
            )
        ),
    ]
    assert KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("field", "line"),
    [
        ("algorithm: lowest-usage", "algorithm: {placeholder}"),
        ("provider: openai", "provider: {placeholder}"),
    ],
)
def test_a_misplaced_secret_is_redacted_from_errors(tmp_path: Path, field: str, line: str) -> None:
    placeholder = '${{ env "DECK_OPENAI_API_KEY" }}'
    text = (
        (SEED / "kong-global.yaml")
        .read_text()
        .replace(field, line.format(placeholder=placeholder), 1)
    )
    misplaced = tmp_path / "misplaced.yaml"
    misplaced.write_text(text)
    result = check(misplaced)
    assert result.returncode == 1
    assert "<redacted>" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_missing_file_is_reported_not_a_traceback(tmp_path: Path) -> None:
    result = check(tmp_path / "absent.yaml")
    assert result.returncode == 1
    assert "cannot read" in result.stdout
    assert "Traceback" not in result.stderr
