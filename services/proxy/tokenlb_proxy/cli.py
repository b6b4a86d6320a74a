"""The ``tokenlb`` command line (the contract in design.md): what each command runs.
Its arguments, their help and each command's examples are in ``cli_parser.py``.

tokenlb proxy --config FILE [--host H] [--port 8000] [--admin-host 127.0.0.1]
              [--admin-port 8001] [--redis-url URL]
              (with --redis-url, --config only seeds an empty Redis and may be left out)
tokenlb aggregator --redis-url URL [...]
tokenlb stats --redis-url URL [--minutes 15] [--per-minute] [--json]
tokenlb mock-upstream [--port 9000] [...]
tokenlb check FILE
tokenlb config sync FILE [--dry-run] [--redis-url URL]
tokenlb config dump [-o FILE] [--redis-url URL]
tokenlb config apply -f MANIFEST [--service|--route|--consumer|--consumer-group NAME]
                     [--redis-url URL]
tokenlb demo [--requests N] [--replicas N] [--concurrency N]
tokenlb cluster up [--demo | --config FILE] [--replicas 3] [--port 8080] [--load N] [...]
tokenlb load --url URL [--requests 300] [--concurrency 16]

An operator's mistake ends a command with one line on stderr, never a traceback: exit
code 2 for a usage mistake (an option or variable missing or malformed), 1 when the
command could not do its work (an address in use, Redis not answering, a config that
cannot be served).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tokenlb_proxy.cli_parser import build_parser

if TYPE_CHECKING:
    from tokenlb_proxy.config import ConfigError

__all__ = ["build_parser", "main"]


def _configure_logging(command: str, default_level: str = "INFO") -> bool:
    """Log as ``TOKENLB_LOG_LEVEL``/``TOKENLB_LOG_FORMAT`` say; False (after saying why)
    when they hold something unusable."""
    from tokenlb_proxy.logs import configure_logging  # noqa: PLC0415 - keep `--help` fast
    from tokenlb_proxy.settings import SettingsError, log_settings_from_env  # noqa: PLC0415

    try:
        configure_logging(log_settings_from_env(default_level=default_level))
    except SettingsError as exc:
        print(f"tokenlb {command}: {exc}", file=sys.stderr)
        return False
    return True


def _valid_redis_url(command: str, url: str) -> bool:
    """Whether ``url`` is a Redis URL tokenlb understands; says why not on stderr."""
    from tokenlb_proxy.settings import redact_url  # noqa: PLC0415
    from tokenlb_proxy.store.connect import parse_redis_url  # noqa: PLC0415

    try:
        parse_redis_url(url)
    except ValueError as exc:
        print(f"tokenlb {command}: invalid Redis URL {redact_url(url)}: {exc}", file=sys.stderr)
        return False
    return True


def _required_redis_url(command: str, explicit: str | None) -> str | None:
    """The Redis URL of a command that cannot work without one (``--redis-url``, else
    ``TOKENLB_REDIS_URL``); None after saying on stderr why there is none usable."""
    from tokenlb_proxy.settings import redis_url_from_env  # noqa: PLC0415

    url = redis_url_from_env(explicit)
    if not url:
        print(f"tokenlb {command}: --redis-url (or TOKENLB_REDIS_URL) is required", file=sys.stderr)
        return None
    return url if _valid_redis_url(command, url) else None


def _talking_to_redis(
    command: str, redis_url: str, run: Callable[[], int], consequence: str = ""
) -> int:
    """Run ``run``, the part of a command that needs Redis at ``redis_url``. Redis not
    answering is an operator's matter (a wrong URL, a server not started), not a bug: it
    ends the command with exit code 1 and one line, the same for every command (the URL
    with its password masked, the reason, and ``consequence``), never a traceback."""
    from tokenlb_proxy.redis_outage import describe_outage, is_outage  # noqa: PLC0415

    try:
        return run()
    except Exception as exc:
        if not is_outage(exc):
            raise
        print(f"tokenlb {command}: {describe_outage(redis_url, exc)}{consequence}", file=sys.stderr)
        return 1


def _print_config_error(command: str, what: str, exc: ConfigError) -> None:
    """A config that cannot be served: one line for one problem, else a line naming
    ``what`` and one indented line per problem (each with its field path)."""
    if len(exc.errors) == 1:
        print(f"tokenlb {command}: {what}: {exc.errors[0]}", file=sys.stderr)
        return
    print(f"tokenlb {command}: {what}: {len(exc.errors)} errors", file=sys.stderr)
    for error in exc.errors:
        print(f"  {error}", file=sys.stderr)


def _cmd_proxy(args: argparse.Namespace) -> int:
    from tokenlb_proxy.admin.security import is_loopback  # noqa: PLC0415 - keep `--help` fast
    from tokenlb_proxy.config import ConfigError  # noqa: PLC0415
    from tokenlb_proxy.listen import CannotListen  # noqa: PLC0415
    from tokenlb_proxy.server import run_proxy  # noqa: PLC0415
    from tokenlb_proxy.settings import SettingsError, settings_from_env  # noqa: PLC0415

    if not _configure_logging("proxy"):
        return 2
    try:
        settings = settings_from_env(
            config_path=args.config,
            redis_url=args.redis_url,
            host=args.host,
            port=args.port,
            admin_host=args.admin_host,
            admin_port=args.admin_port,
            usage_events=args.usage_events,
        )
    except SettingsError as exc:
        print(f"tokenlb proxy: {exc}", file=sys.stderr)
        return 2
    if not settings.config_path and not settings.redis_url:
        print(
            "tokenlb proxy: --config FILE (or TOKENLB_CONFIG) is required without --redis-url",
            file=sys.stderr,
        )
        return 2
    if settings.redis_url and not _valid_redis_url("proxy", settings.redis_url):
        return 2
    if not settings.admin_token and not is_loopback(settings.admin_host):
        print(
            f"tokenlb proxy: the Admin API would listen on {settings.admin_host}, which is "
            "not a loopback address, without a token: set TOKENLB_ADMIN_TOKEN (clients send "
            "it in the Kong-Admin-Token header) or use --admin-host 127.0.0.1",
            file=sys.stderr,
        )
        return 2

    def serve() -> int:
        try:
            run_proxy(settings)
        except CannotListen as exc:
            print(f"tokenlb proxy: {exc}", file=sys.stderr)
            return 1
        except ConfigError as exc:
            what = f"invalid config {settings.config_path}" if settings.config_path else "no config"
            _print_config_error("proxy", what, exc)
            return 1
        return 0

    if not settings.redis_url:
        return serve()
    # A replica with a config file serves through an outage: only one without a file
    # stops because Redis does not answer (control/startup.py).
    consequence = "" if settings.config_path else "; without --config there is nothing to serve"
    return _talking_to_redis("proxy", settings.redis_url, serve, consequence)


def _cmd_aggregator(args: argparse.Namespace) -> int:
    from tokenlb_aggregator.main import run_aggregator  # noqa: PLC0415
    from tokenlb_aggregator.settings import aggregator_settings  # noqa: PLC0415
    from tokenlb_proxy.settings import SettingsError  # noqa: PLC0415

    try:
        settings = aggregator_settings(
            redis_url=args.redis_url,
            name=args.name,
            log_sink=args.log_sink,
            claim_idle_ms=args.claim_idle_ms,
            rollup_retention_s=args.rollup_retention,
        )
    except SettingsError as exc:
        print(f"tokenlb aggregator: {exc}", file=sys.stderr)
        return 2
    if not _configure_logging("aggregator"):
        return 2
    if not settings.redis_url:
        print("tokenlb aggregator: --redis-url (or TOKENLB_REDIS_URL) is required", file=sys.stderr)
        return 2
    if not _valid_redis_url("aggregator", settings.redis_url):
        return 2
    # No _talking_to_redis: an aggregator outlives Redis outages (it says so once and
    # retries every second), so it also waits for a Redis that is not up yet.
    run_aggregator(settings)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from tokenlb_proxy.stats_cli import print_stats  # noqa: PLC0415

    redis_url = _required_redis_url("stats", args.redis_url)
    if redis_url is None:
        return 2
    return _talking_to_redis(
        "stats",
        redis_url,
        lambda: asyncio.run(
            print_stats(redis_url, args.minutes, as_json=args.json, per_minute=args.per_minute)
        ),
    )


def _cmd_check(args: argparse.Namespace) -> int:
    from tokenlb_proxy.config import ConfigError, load_config  # noqa: PLC0415

    try:
        gateway = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.errors)} error(s)")
        for error in exc.errors:
            print(f"  {error}")
        return 1
    print(f"{args.file}: OK ({len(gateway.routes)} route(s), {len(gateway.balancers)} balancer(s))")
    for plan in gateway.balancers:
        targets = ", ".join(f"{t.label} (weight {t.weight})" for t in plan.targets)
        print(
            f"  balancer {plan.balancer_id}: {plan.algorithm}, {plan.tokens_count_strategy}: "
            f"{targets}"
        )
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from tokenlb_proxy.control import commands  # noqa: PLC0415
    from tokenlb_proxy.control.repository import ConfigConflict  # noqa: PLC0415

    command = f"config {args.action}"
    redis_url = _required_redis_url(command, args.redis_url)
    if redis_url is None:
        return 2

    def run() -> int:
        try:
            if args.action == "sync":
                return asyncio.run(commands.sync_config(args.file, redis_url, dry_run=args.dry_run))
            if args.action == "dump":
                return commands.dump_config(redis_url, args.output)
            binding = commands.PluginBinding(
                service=args.service,
                route=args.route,
                consumer=args.consumer,
                consumer_group=args.consumer_group,
            )
            return asyncio.run(commands.apply_manifest(args.filename, redis_url, binding))
        except ConfigConflict:
            print(
                f"tokenlb {command}: the config kept changing meanwhile; try again", file=sys.stderr
            )
            return 1

    unchanged = "" if args.action == "dump" else "; nothing was changed"
    return _talking_to_redis(command, redis_url, run, unchanged)


def _cmd_mock_upstream(args: argparse.Namespace) -> int:
    from tokenlb_proxy.listen import CannotListen  # noqa: PLC0415
    from tokenlb_proxy.mock_upstream import run_mock_upstream, settings_from_args  # noqa: PLC0415

    if not _configure_logging("mock-upstream", default_level="WARNING"):
        return 2
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"tokenlb mock-upstream: {exc}", file=sys.stderr)
        return 2
    try:
        run_mock_upstream(args.host, args.port, settings)
    except CannotListen as exc:
        print(f"tokenlb mock-upstream: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tokenlb_proxy.demo import run_demo  # noqa: PLC0415

    return run_demo(requests=args.requests, replicas=args.replicas, concurrency=args.concurrency)


def _cmd_cluster_up(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from tokenlb_proxy.cluster import ClusterOptions, run_cluster  # noqa: PLC0415

    if args.replicas < 1:
        print("tokenlb cluster up: --replicas must be at least 1", file=sys.stderr)
        return 2
    if args.config is not None and not Path(args.config).is_file():
        # Said here, once: otherwise every replica fails on it and the cluster reports that.
        print(f"tokenlb cluster up: --config {args.config} is not a file", file=sys.stderr)
        return 2
    if args.redis_url is not None:
        if not _valid_redis_url("cluster up", args.redis_url):
            return 2
        # Checked before any child starts: replicas would serve on through the outage,
        # and the cluster would only give up once the aggregator never came up.
        if _talking_to_redis("cluster up", args.redis_url, lambda: _ping(args.redis_url)):
            return 1
    return run_cluster(
        ClusterOptions(
            replicas=args.replicas,
            demo=args.demo,
            config=Path(args.config) if args.config else None,
            port=args.port,
            replica_port=args.replica_port,
            redis_url=args.redis_url,
            haproxy=args.haproxy,
            load=args.load,
            workdir=Path(args.workdir) if args.workdir else None,
        )
    )


def _ping(redis_url: str) -> int:
    """0 once Redis at ``redis_url`` answered a PING; raises the outage otherwise."""
    import asyncio  # noqa: PLC0415

    from tokenlb_proxy.store.connect import connect_redis  # noqa: PLC0415

    async def ping() -> None:
        client = connect_redis(redis_url, timeout_s=5.0)
        try:
            await client.ping()
        finally:
            await client.aclose()

    asyncio.run(ping())
    return 0


def _cmd_load(args: argparse.Namespace) -> int:
    from tokenlb_proxy.load import run_load  # noqa: PLC0415

    return run_load(
        args.url,
        requests=args.requests,
        concurrency=args.concurrency,
        stream_share=args.stream_share,
        wait_s=args.wait,
    )


#: What runs each command (``args.command``); a command with actions reads ``args.action``.
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "proxy": _cmd_proxy,
    "aggregator": _cmd_aggregator,
    "stats": _cmd_stats,
    "check": _cmd_check,
    "mock-upstream": _cmd_mock_upstream,
    "demo": _cmd_demo,
    "config": _cmd_config,
    "cluster": _cmd_cluster_up,
    "load": _cmd_load,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
