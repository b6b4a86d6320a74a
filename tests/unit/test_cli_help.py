"""`tokenlb ... --help` teaches: every argument says what it is for, every command ends
with examples that parse, and `tokenlb proxy --help` lists the variables it reads."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping

import msgspec
import pytest

from tests.support import tokenlb_command
from tokenlb_aggregator.settings import AggregatorSettings
from tokenlb_proxy.cli import build_parser
from tokenlb_proxy.settings import settings_from_env


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, parser) of the root and every subcommand, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


PARSERS = dict(_parsers(build_parser()))


def _examples(parser: argparse.ArgumentParser) -> list[str]:
    epilog = parser.epilog or ""
    _, found, block = epilog.rpartition("examples:\n")
    assert found, f"no examples in {parser.prog}"
    return [line.strip() for line in block.splitlines()]


def test_the_tree_was_walked() -> None:
    assert {"proxy", "stats", "check", "demo", "load", "mock-upstream"} <= {
        p[0] for p in PARSERS if p
    }
    assert ("config", "apply") in PARSERS
    assert ("cluster", "up") in PARSERS


@pytest.mark.parametrize("path", list(PARSERS), ids=lambda path: " ".join(("tokenlb", *path)))
def test_every_argument_and_option_has_help(path: tuple[str, ...]) -> None:
    parser = PARSERS[path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            assert set(summaries) == set(action.choices)
            assert all(summaries.values()), summaries
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help is not None, f"{parser.prog} {name}"
        assert action.help != argparse.SUPPRESS, f"{parser.prog} {name}"
        assert action.help.strip(), f"{parser.prog} {name}"


@pytest.mark.parametrize("path", list(PARSERS), ids=lambda path: " ".join(("tokenlb", *path)))
def test_every_help_ends_with_examples_of_that_command_that_parse(path: tuple[str, ...]) -> None:
    parser = PARSERS[path]
    examples = _examples(parser)
    assert 1 <= len(examples) <= 2
    text = parser.format_help()
    assert text.rstrip().endswith(examples[-1]), "the examples are the end of the help"
    for example in examples:
        assert f"  {example}\n" in text + "\n", "examples keep their lines (raw epilog)"
        words = shlex.split(example)
        assert words[: len(path) + 1] == ["tokenlb", *path], example
        if path:
            args = build_parser().parse_args(words[1:])
            assert args.command == path[0]


def _help(*command: str) -> str:
    result = subprocess.run(
        tokenlb_command(*command, "--help"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout


class _Recording(Mapping[str, str]):
    """An empty environment that notes every variable looked up in it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        self.read.add(str(name))
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_proxy_help_lists_exactly_the_variables_the_settings_read() -> None:
    environment = _Recording()
    settings_from_env(environment)
    assert environment.read, "settings_from_env read no variable at all"

    listed = set(re.findall(r"^  (TOKENLB_[A-Z0-9_]+)$", _help("proxy"), re.M))

    assert listed == environment.read


def test_aggregator_help_shows_the_settings_defaults() -> None:
    defaults = {f.name: f.default for f in msgspec.structs.fields(AggregatorSettings)}
    text = " ".join(_help("aggregator").split())
    assert f"pending this long (default {defaults['claim_idle_ms']})" in text
    assert f"rollups are kept (default {defaults['rollup_retention_s']})" in text


def test_help_imports_no_server_client_or_dev_tool() -> None:
    """`tokenlb --help` builds the whole tree without the heavy imports the commands do."""
    code = (
        "import sys\n"
        "from tokenlb_proxy.cli import main\n"
        "try:\n"
        "    main(['proxy', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    loaded = set(result.stdout.split())
    heavy = {"uvicorn", "litestar", "redis", "httpx", "aiohttp", "tiktoken", "rich"}
    assert not loaded & heavy
    assert "tokenlb_aggregator" not in loaded
