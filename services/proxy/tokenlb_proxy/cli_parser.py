"""The ``tokenlb`` argument tree: every command, its options with their help, and the
examples each ``--help`` ends with (``cli.py`` runs the commands).

Help is where a newcomer learns the tool, so every argument says what it is for and its
default, and every command's help ends with examples that run as written (a test parses
each one). Defaults shown for the proxy come from its settings, and its environment
variables from the list the settings read, so the help cannot drift from the code.
Nothing here imports a server, a client or a dev tool: ``tokenlb --help`` stays fast.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from typing import Any

from tokenlb_proxy import __version__

__all__ = ["build_parser"]

#: Where help text is wrapped (argparse does not wrap raw descriptions and epilogs).
WIDTH = 79
REDIS = "redis://127.0.0.1:6379/0"
REDIS_URL_HELP = "the fleet's Redis (default: TOKENLB_REDIS_URL)"


def _wrap(text: str) -> str:
    """``text`` wrapped to ``WIDTH``, paragraph by paragraph (blank-line separated)."""
    return "\n\n".join(textwrap.fill(p, WIDTH) for p in text.split("\n\n"))


def _epilog(examples: Sequence[str], before: str = "") -> str:
    """The end of a command's help: ``before`` (if any), then its examples, each on its
    own line as typed."""
    lines = "\n".join(f"  {example}" for example in examples)
    return f"{before}\n\nexamples:\n{lines}" if before else f"examples:\n{lines}"


def _command(
    group: Any, name: str, summary: str, description: str, examples: Sequence[str], notes: str = ""
) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in its parent's list, ``description`` above its options,
    ``notes`` and ``examples`` below them."""
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=summary,
        description=_wrap(description),
        epilog=_epilog(examples, notes),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _environment(variables: Sequence[tuple[str, str]]) -> str:
    """The variables block of a ``--help``: a name, then what it sets, wrapped under it."""
    lines = ["environment (an option given on the command line wins):"]
    for name, text in variables:
        lines.append(f"  {name}")
        lines.extend(textwrap.wrap(text, WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def _add_proxy(commands: Any) -> None:
    from tokenlb_proxy.settings import (  # noqa: PLC0415
        LOG_ENVIRONMENT,
        PROXY_ENVIRONMENT,
        LogSettings,
        ProxySettings,
        describe_environment,
    )

    d = ProxySettings()
    variables = [
        *describe_environment(PROXY_ENVIRONMENT, ProxySettings),
        *describe_environment(LOG_ENVIRONMENT, LogSettings),
    ]
    notes = (
        _environment(variables)
        + "\n\n"
        + _wrap(
            'The config\'s decK placeholders (${{ env "DECK_NAME" }}) and vault references '
            "({vault://env/NAME}) are filled from the environment too."
        )
    )
    proxy = _command(
        commands,
        "proxy",
        "run one proxy replica",
        "Run one replica: the OpenAI-compatible proxy port, and the admin port with "
        "/status, /stats, /metrics and Kong's Admin API. With --redis-url every replica "
        "shares one balancer and one config in Redis (--config then only seeds an empty "
        "Redis); without it the replica balances alone on an embedded store.",
        [
            "tokenlb proxy --config examples/kong.yaml",
            f"tokenlb proxy --config examples/kong.yaml --port 8100 --admin-port 8101 "
            f"--redis-url {REDIS}",
        ],
        notes,
    )
    proxy.add_argument(
        "--config",
        metavar="FILE",
        help="kong.yaml, plugin JSON or KongPlugin manifest to serve (with --redis-url: "
        "seeds an empty Redis; optional once Redis holds a config)",
    )
    proxy.add_argument(
        "--host", metavar="HOST", help=f"address of the proxy port (default {d.host})"
    )
    proxy.add_argument(
        "--port", type=int, metavar="PORT", help=f"proxy port (default {d.port}; 0: any free)"
    )
    proxy.add_argument(
        "--admin-host",
        metavar="HOST",
        help=f"address of the admin port (default {d.admin_host}; any address that is not "
        "loopback needs TOKENLB_ADMIN_TOKEN)",
    )
    proxy.add_argument(
        "--admin-port",
        type=int,
        metavar="PORT",
        help=f"admin port: /status, /metrics, Admin API (default {d.admin_port}; 0: any free)",
    )
    proxy.add_argument(
        "--redis-url",
        metavar="URL",
        help="the fleet's shared Redis: redis://, rediss://, unix://, redis+cluster:// or "
        "redis+sentinel:// (default: none, an embedded store for this replica alone)",
    )
    proxy.add_argument(
        "--no-usage-events",
        dest="usage_events",
        action="store_false",
        default=None,
        help="do not append usage events to Redis (no aggregator rollups or traces)",
    )


def _add_aggregator(commands: Any) -> None:
    # The defaults are written out: importing the aggregator's settings would import its
    # worker and redis-py, a third of a second on every `tokenlb --help` (a test checks
    # they match AggregatorSettings).
    aggregator = _command(
        commands,
        "aggregator",
        "turn usage events into rollups, Kong log lines and traces",
        "Read the replicas' usage events from Redis and turn them into per-minute rollups "
        "(what `tokenlb stats` shows), Kong log lines and OpenTelemetry traces (exported "
        "where the standard OTEL_EXPORTER_OTLP_* variables say). Run one or several beside "
        "the replicas; each one outlives Redis outages. Every setting can also come from "
        "TOKENLB_AGGREGATOR_<SETTING>, e.g. TOKENLB_AGGREGATOR_CLAIM_IDLE_MS.",
        [
            f"tokenlb aggregator --redis-url {REDIS}",
            f"tokenlb aggregator --redis-url {REDIS} --log-sink /var/log/tokenlb/kong.log",
        ],
    )
    aggregator.add_argument(
        "--redis-url", metavar="URL", help="the proxies' Redis (default: TOKENLB_REDIS_URL)"
    )
    aggregator.add_argument(
        "--name", metavar="NAME", help="this aggregator's consumer name (default: host-pid)"
    )
    aggregator.add_argument(
        "--log-sink",
        metavar="SINK",
        help="where Kong's log lines go: stdout, stderr, none or a file path (default: "
        "TOKENLB_LOG_SINK, else stdout)",
    )
    aggregator.add_argument(
        "--claim-idle-ms",
        type=int,
        metavar="MS",
        help="take over events another aggregator left pending this long (default 15000)",
    )
    aggregator.add_argument(
        "--rollup-retention",
        type=int,
        metavar="SECONDS",
        help="how long per-minute rollups are kept (default 604800)",
    )


def _add_stats(commands: Any) -> None:
    stats = _command(
        commands,
        "stats",
        "per-target usage, tokens, cost, latency and share",
        "Per target of every balancer the replicas announced: requests, errors, tokens, "
        "cost and latency over the window (the aggregators' rollups), usage now (the "
        "balancer state), and its share of what its balancer counts: prompt, completion or "
        "total tokens, or cost, for lowest-usage by that tokens_count_strategy; requests "
        "for every other algorithm, since those hand out requests, not tokens. When no "
        "aggregator is running it says so first: the window's counters then stand still.",
        [f"tokenlb stats --redis-url {REDIS}", "tokenlb stats --minutes 60 --per-minute --json"],
    )
    stats.add_argument("--redis-url", metavar="URL", help=REDIS_URL_HELP)
    stats.add_argument(
        "--minutes",
        type=int,
        default=15,
        metavar="N",
        help="window, in minutes (default %(default)s)",
    )
    stats.add_argument(
        "--json", action="store_true", help="print JSON (as GET /stats) instead of tables"
    )
    stats.add_argument("--per-minute", action="store_true", help="also a row per target and minute")


def _add_check(commands: Any) -> None:
    check = _command(
        commands,
        "check",
        "validate a config file and print its errors",
        "Validate a config file as `tokenlb proxy` loads it (decK placeholders filled from "
        "the environment) and print every error with its field path, or a summary of its "
        "routes and balancers; exit code 1 when it has errors.",
        ["tokenlb check examples/kong.yaml", "tokenlb check examples/local-mock.yaml"],
    )
    check.add_argument("file", metavar="FILE", help="kong.yaml, plugin JSON or KongPlugin manifest")


def _add_mock_upstream(commands: Any) -> None:
    from tokenlb_proxy.mock_state import add_mock_arguments  # noqa: PLC0415

    mock = _command(
        commands,
        "mock-upstream",
        "run an OpenAI-compatible fake LLM",
        "A fake upstream for demos, tests and benchmarks: it speaks the providers' APIs with "
        "deterministic usage, and adds latency, failures and key checks on demand; "
        "GET /mock/stats counts what it served.",
        [
            "tokenlb mock-upstream --port 9000",
            "tokenlb mock-upstream --latency-ms 20 --fail-rate 0.05 --require-key sk-test",
        ],
    )
    add_mock_arguments(mock)


def _add_demo(commands: Any) -> None:
    demo = _command(
        commands,
        "demo",
        "run a local fleet and show the balance",
        "Start the mock upstream, a private redis-server when one is installed (otherwise "
        "every replica balances on its own embedded store) and N replicas, send chat "
        "requests of heavy-tailed sizes over them, and print per target what the clients "
        "saw and its share of what the balancer counts. Needs no API key and no network.",
        ["tokenlb demo", "tokenlb demo --requests 1000 --replicas 5 --concurrency 48"],
    )
    demo.add_argument(
        "--requests",
        type=int,
        default=300,
        metavar="N",
        help="chat requests to send (default %(default)s)",
    )
    demo.add_argument(
        "--replicas",
        type=int,
        default=3,
        metavar="N",
        help="proxy replicas to start (default %(default)s)",
    )
    demo.add_argument(
        "--concurrency",
        type=int,
        default=24,
        metavar="N",
        help="requests in flight at once (default %(default)s)",
    )


def _add_config(commands: Any) -> None:
    config = _command(
        commands,
        "config",
        "the fleet's config in Redis (decK-like)",
        "Read and change the one config every replica serves, kept in Redis: validated as a "
        "file is, stored with compare-and-set, served by every replica within a second.",
        [
            f"tokenlb config sync examples/kong.yaml --dry-run --redis-url {REDIS}",
            f"tokenlb config dump -o live.yaml --redis-url {REDIS}",
        ],
    )
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    sync = _command(
        actions,
        "sync",
        "make Redis hold what a kong.yaml says, showing the difference first",
        "Validate the file, print what would be created, updated and deleted, then store "
        "it (decK's sync); the replicas serve it within a second.",
        [
            f"tokenlb config sync examples/kong.yaml --dry-run --redis-url {REDIS}",
            f"tokenlb config sync examples/kong.yaml --redis-url {REDIS}",
        ],
    )
    sync.add_argument("file", metavar="FILE", help="the kong.yaml (decK format) to serve")
    sync.add_argument("--dry-run", action="store_true", help="print the difference, store nothing")
    dump = _command(
        actions,
        "dump",
        "the stored config as a kong.yaml",
        "Print the stored config as a kong.yaml, ids kept and secret references left as "
        "written, so that a later `tokenlb config sync` of it finds the same entities.",
        [
            f"tokenlb config dump --redis-url {REDIS}",
            f"tokenlb config dump -o live.yaml --redis-url {REDIS}",
        ],
    )
    dump.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead of stdout")
    apply = _command(
        actions,
        "apply",
        "upsert the KongPlugin / KongClusterPlugin resources of a manifest",
        "Upsert each KongPlugin or KongClusterPlugin of a manifest (the bodies kubectl "
        "apply takes) by metadata.name; global, unless an option binds it to an entity "
        "as a konghq.com/plugins annotation would.",
        [
            f"tokenlb config apply -f kong-plugin.yaml --redis-url {REDIS}",
            "tokenlb config apply -f kong-plugin.yaml --route chat",
        ],
    )
    apply.add_argument(
        "-f", "--filename", required=True, metavar="FILE", help="the manifest (YAML)"
    )
    for scope in ("service", "route", "consumer", "consumer-group"):
        apply.add_argument(f"--{scope}", metavar="NAME", help=f"bind the plugins to this {scope}")
    for action in (sync, dump, apply):
        action.add_argument("--redis-url", metavar="URL", help=REDIS_URL_HELP)


def _add_cluster(commands: Any) -> None:
    cluster = _command(
        commands,
        "cluster",
        "run the docker-compose topology locally",
        "Run the topology of docker-compose.yml as local processes, without docker.",
        ["tokenlb cluster up --demo", "tokenlb cluster up --config examples/kong.yaml"],
    )
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = _command(
        actions,
        "up",
        "Redis, N replicas, the aggregator and HAProxy (and the mock with --demo) until Ctrl-C",
        "Start a private redis-server (or use --redis-url), N replicas, the aggregator and "
        "HAProxy in front (when installed), plus the mock upstream with --demo; print every "
        "endpoint, write cluster.json in the work directory, and stop everything on Ctrl-C "
        "or SIGTERM, or when a child dies.",
        [
            "tokenlb cluster up --demo --replicas 3 --load 300",
            f"tokenlb cluster up --config examples/kong.yaml --redis-url {REDIS}",
        ],
    )
    up.add_argument(
        "--replicas",
        type=int,
        default=3,
        metavar="N",
        help="proxy replicas to run (default %(default)s)",
    )
    source = up.add_mutually_exclusive_group()
    source.add_argument(
        "--demo", action="store_true", help="serve the mock upstream with the demo config"
    )
    source.add_argument(
        "--config", metavar="FILE", help="kong.yaml for the replicas (keys from DECK_* variables)"
    )
    up.add_argument(
        "--port",
        type=int,
        default=8080,
        metavar="PORT",
        help="HAProxy port (default %(default)s; 0: any free)",
    )
    up.add_argument(
        "--replica-port",
        type=int,
        default=8100,
        metavar="PORT",
        help="replica i on PORT+2i, its admin on PORT+2i+1 (default %(default)s; 0: free ports)",
    )
    up.add_argument(
        "--redis-url", metavar="URL", help="use this Redis instead of a private redis-server"
    )
    up.add_argument(
        "--haproxy", metavar="PATH", help="haproxy binary (default: from PATH or /usr/sbin)"
    )
    up.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="send N demo requests once up (default: none)",
    )
    up.add_argument(
        "--workdir",
        metavar="DIR",
        help="logs, rendered configs, cluster.json (default: a temp dir)",
    )


def _add_load(commands: Any) -> None:
    load = _command(
        commands,
        "load",
        "send demo traffic to a running gateway",
        "Send chat requests of heavy-tailed sizes, some streamed, to a gateway's OpenAI base "
        "URL and print per target (the X-Kong-LLM-Model header) what it answered; waits for "
        "the URL to answer first.",
        [
            "tokenlb load --url http://127.0.0.1:8080/v1",
            "tokenlb load --url http://127.0.0.1:8000/v1 --requests 1000 --concurrency 32",
        ],
    )
    load.add_argument(
        "--url", required=True, metavar="URL", help="OpenAI base URL, e.g. http://host:8080/v1"
    )
    load.add_argument(
        "--requests",
        type=int,
        default=300,
        metavar="N",
        help="chat requests to send (default %(default)s)",
    )
    load.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="N",
        help="requests in flight at once (default %(default)s)",
    )
    load.add_argument(
        "--stream-share",
        type=float,
        default=0.3,
        metavar="SHARE",
        help="share of requests streamed, 0..1 (default %(default)s)",
    )
    load.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the URL to answer (default %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole ``tokenlb`` command line; ``args.command`` names what to run."""
    parser = argparse.ArgumentParser(
        prog="tokenlb",
        description=_wrap(
            "An LLM gateway that balances OpenAI-style traffic over many targets by lowest "
            "usage (and Kong's other algorithms), fleet-wide, from Kong's ai-proxy-advanced "
            "config."
        ),
        epilog=_epilog(
            ["tokenlb demo", f"tokenlb proxy --config examples/kong.yaml --redis-url {REDIS}"],
            "Run `tokenlb COMMAND --help` for a command's options and examples.",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tokenlb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_proxy,
        _add_aggregator,
        _add_stats,
        _add_check,
        _add_mock_upstream,
        _add_demo,
        _add_config,
        _add_cluster,
        _add_load,
    ):
        add(commands)
    return parser
