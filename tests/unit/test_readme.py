"""The README's commands and metric names are the real ones."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.support import REPO
from tests.unit.test_metrics import gateway
from tokenlb_proxy.cli import build_parser
from tokenlb_proxy.metrics import ProxyMetrics

README = (REPO / "README.md").read_text()
CODE = "\n".join(re.findall(r"```sh\n(.*?)```", README, re.S))
#: Each ``tokenlb ...`` line of a shell block, without its comment or a trailing ``&``.
COMMANDS = [
    line.split("#")[0].strip().removesuffix("&").strip()
    for line in CODE.splitlines()
    if line.strip().startswith("tokenlb ")
]


def test_the_quick_start_is_two_commands() -> None:
    assert "bash scripts/demo.sh     # install into .venv" in README
    assert "bash scripts/test.sh     # install with test tools" in README


@pytest.mark.parametrize("command", COMMANDS)
def test_every_tokenlb_command_parses(command: str) -> None:
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert args.command


def test_commands_were_found() -> None:
    assert any(c.startswith("tokenlb cluster up") for c in COMMANDS)


def test_metric_table_lists_exactly_what_metrics_serves() -> None:
    table = set(re.findall(r"^\| `([a-z_]+)` \| (?:counter|gauge|histogram) \|", README, re.M))
    text = ProxyMetrics(gateway("gpt-4")).render(degraded=False, redis_outages=0)
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert table == served
